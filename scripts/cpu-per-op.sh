#!/usr/bin/env bash
# Where the time goes: CPU spent per operation by the whole machine, by the
# coordinator process and (XDP mode) by the XDP program, for one mode.
# Usage (root): scripts/cpu-per-op.sh user|xdp [seconds]
set -euo pipefail
mode=${1:?usage: $0 user|xdp [seconds]}
seconds=${2:-10}
tern=${TERN:-target/release/tern}
dir=$(mktemp -d)
trap '"$tern" cluster down --dir "$dir" >/dev/null 2>&1 || true; rm -rf "$dir"' EXIT
"$tern" cluster up --dir "$dir" --mode "$mode" --topology netns >/dev/null
coordinator=$(awk '/name = "coordinator"/{found=1} found && /^pid/{print $3; exit}' "$dir/processes.toml")
ticks=$(getconf CLK_TCK)
busy() { awk '/^cpu /{print $2+$3+$4+$7+$8}' /proc/stat; }          # user nice system irq softirq
process_cpu() { awk '{print $14+$15}' "/proc/$1/stat"; }             # utime stime
sysctl -qw kernel.bpf_stats_enabled=1
busy_before=$(busy); coordinator_before=$(process_cpu "$coordinator")
runs_before=$("$tern" --cluster "$dir/cluster.toml" stats | awk '/^xdp.program_runs/{print $2}'); runs_before=${runs_before:-0}
ns_before=$("$tern" --cluster "$dir/cluster.toml" stats | awk '/^xdp.program_run_ns/{print $2}'); ns_before=${ns_before:-0}
report=$("$tern" --cluster "$dir/cluster.toml" bench --duration "${seconds}s" --read-fraction 0.95 \
    --distribution zipfian --keys 10000 --clients 8)
busy_after=$(busy); coordinator_after=$(process_cpu "$coordinator")
runs_after=$("$tern" --cluster "$dir/cluster.toml" stats | awk '/^xdp.program_runs/{print $2}'); runs_after=${runs_after:-0}
ns_after=$("$tern" --cluster "$dir/cluster.toml" stats | awk '/^xdp.program_run_ns/{print $2}'); ns_after=${ns_after:-0}
sysctl -qw kernel.bpf_stats_enabled=0
ops=$(echo "$report" | awk '/^throughput/{gsub(/\(/,"",$4); print $4}')
echo "$report" | grep throughput
awk -v mode="$mode" -v ops="$ops" -v ticks="$ticks" \
    -v busy=$((busy_after - busy_before)) -v coordinator=$((coordinator_after - coordinator_before)) \
    -v runs=$((runs_after - runs_before)) -v ns=$((ns_after - ns_before)) 'BEGIN {
    printf "%s: %.1f us of CPU per operation (all processes and the kernel), of which coordinator process %.1f us", mode, busy / ticks * 1e6 / ops, coordinator / ticks * 1e6 / ops
    if (runs > 0) printf ", XDP program %.2f us (%.2f runs per operation, %.0f ns per run)", ns / 1000 / ops, runs / ops, ns / runs
    printf "\n"
}'
