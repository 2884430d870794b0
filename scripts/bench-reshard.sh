#!/usr/bin/env bash
# Live slot migration under load, against the same load without it, runs
# alternating: each run starts a fresh netns cluster (2 shards x 3 replicas,
# MODE=user or xdp), loads 100 000 keys, runs YCSB-B for 12 s with 2
# pipelined clients, and in a "migrate" run moves slots 0-4095 (half of
# shard 0) to shard 1 two seconds in. Needs root (network namespaces).
set -euo pipefail
TERN=${TERN:-target/release/tern}
REPEAT=${REPEAT:-2}
DIR=$(mktemp -d /tmp/tern-reshard-bench.XXXXXX)
trap '$TERN cluster down --dir "$DIR" >/dev/null 2>&1 || true; rm -rf "$DIR"' EXIT

one_run() {
	$TERN cluster down --dir "$DIR" >/dev/null 2>&1 || true
	rm -rf "$DIR"/*
	$TERN cluster up --dir "$DIR" --shards 2 --replicas 3 --mode "${MODE:-user}" >/dev/null
	$TERN --cluster "$DIR/cluster.toml" bench --workload b --records 100000 --duration 1s \
		--pipeline 16 --clients 2 >/dev/null
	$TERN --cluster "$DIR/cluster.toml" bench --workload b --records 100000 --duration 12s \
		--pipeline 8 --clients 2 --no-load >"$DIR/bench.txt" 2>&1 &
	local bench=$!
	if [ "$1" = migrate ]; then
		sleep 2
		$TERN --cluster "$DIR/cluster.toml" reshard --from 0 --to 1 --slots 0-4095 2>/dev/null | sed 's/^/  /'
	fi
	wait $bench
	grep -E '^(READ|UPDATE|ALL) |throughput' "$DIR/bench.txt" | sed 's/^/  /'
}

for _ in $(seq "$REPEAT"); do
	for run in steady migrate; do
		echo "== $run (${MODE:-user})"
		one_run $run
	done
done
