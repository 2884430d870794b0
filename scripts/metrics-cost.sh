#!/usr/bin/env bash
# Throughput with and without a Prometheus scraping every process, interleaved.
# SCRAPE_INTERVAL (default 1s, 15 times Prometheus's default of 15s).
set -u
I=${SCRAPE_INTERVAL:-1s}
B=${TERN:-target/release/tern}
D=/tmp/mc
$B cluster down --dir $D >/dev/null 2>&1; rm -rf $D /tmp/mc-prom
$B cluster up --dir $D --fresh --topology loopback --durability none >/dev/null
T=$($B cluster status --dir $D | grep -o "127.0.0.1:[0-9]*/metrics" | sed "s#/metrics##;s#.*#'&'#" | paste -sd,)
printf "global:\n  scrape_interval: $I\n  scrape_timeout: 900ms\nscrape_configs:\n  - job_name: tern\n    static_configs:\n      - targets: [$T]\n" > /tmp/mc-prom.yml
for round in 1 2 3; do
  for mode in off on; do
    if [ $mode = on ]; then
      prometheus --config.file=/tmp/mc-prom.yml --storage.tsdb.path=/tmp/mc-prom --web.listen-address=127.0.0.1:19091 >/dev/null 2>&1 &
      P=$!; sleep 3
    fi
    R=$($B --cluster $D/cluster.toml bench --duration 5s --clients 8 --read-fraction 0.5 2>&1 | grep "^throughput")
    echo "round $round prometheus $mode: $R"
    if [ $mode = on ]; then kill $P; wait $P 2>/dev/null; fi
  done
done
$B cluster down --dir $D >/dev/null
