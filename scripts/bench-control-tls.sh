#!/usr/bin/env bash
# The cost of mutual TLS on the control plane where data crosses it: values
# past 1024 bytes travel out of band over the replicas' TCP ports (staged at
# the head, fetched along the chain, read back). Alternating runs of a
# cluster with TLS (the default) and with --no-tls; prints each run's
# ops/s and the medians. Usage: scripts/bench-control-tls.sh [ROUNDS] [VALUE_SIZE]
set -euo pipefail
ROUNDS=${1:-3}
SIZE=${2:-4096}
TERN=${TERN:-target/release/tern}
DIR=$(mktemp -d)
trap '"$TERN" cluster down --dir "$DIR/c" >/dev/null 2>&1 || true; rm -rf "$DIR"' EXIT
declare -A RESULTS
for round in $(seq "$ROUNDS"); do
  for variant in tls plain; do
    extra=()
    [ "$variant" = plain ] && extra=(--no-tls)
    "$TERN" cluster up --dir "$DIR/c" --fresh --topology loopback --durability none --standby 0 "${extra[@]}" >/dev/null
    ops=$("$TERN" --cluster "$DIR/c/cluster.toml" bench --clients 4 --duration 5s --records 2000 \
          --read-fraction 0.5 --value-size "$SIZE" | sed -n 's/^throughput: \([0-9]*\) ops\/s.*/\1/p')
    "$TERN" cluster down --dir "$DIR/c" >/dev/null
    rm -rf "$DIR/c"
    echo "round $round $variant: $ops ops/s"
    RESULTS[$variant]+="$ops "
  done
done
median() { tr ' ' '\n' | grep . | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
tls=$(echo "${RESULTS[tls]}" | median)
plain=$(echo "${RESULTS[plain]}" | median)
echo "median: tls $tls ops/s, plain $plain ops/s, ratio $(awk -v a="$tls" -v b="$plain" 'BEGIN {printf "%.3f", a / b}')"
