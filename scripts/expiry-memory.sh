#!/bin/bash
# Mass expiry: writes KEYS keys of 100 bytes with an 8 s deadline through
# the gateway of a fresh 1x3 cluster (loopback, no durability), then prints
# once a second the replicas' resident memory summed (kB) and their live
# and expiring keys summed, until every key is reaped and a few seconds
# more. docs/BENCHMARKS.md "Mass expiry" has a run.
set -euo pipefail
KEYS=${KEYS:-200000}
DIR=${DIR:-/tmp/tern-expiry-memory}
PORT=${PORT:-6390}
TERN=${TERN:-$(cd "$(dirname "$0")/.." && pwd)/target/release/tern}
export DIR

sample() {
    local total=0 pid rss
    for pid in $(python3 -c "
import os, tomllib
table = tomllib.load(open(os.environ['DIR'] + '/processes.toml', 'rb'))
print(' '.join(str(p['pid']) for p in table['process'] if 'replica' in p['name']))"); do
        rss=$(awk '/VmRSS/ {print $2}' "/proc/$pid/status")
        total=$((total + rss))
    done
    local keys
    keys=$("$TERN" --cluster "$DIR/cluster.toml" stats 2>/dev/null |
        awk '/^(live_keys|expiring_keys) / {s[$1] += $2}
             END {printf "live_keys=%d expiring_keys=%d", s["live_keys"], s["expiring_keys"]}')
    echo "$(date +%T) replicas_rss_kB=$total $keys"
}

"$TERN" cluster down --dir "$DIR" >/dev/null 2>&1 || true
rm -rf "$DIR"
"$TERN" cluster up --dir "$DIR" --fresh --topology loopback --durability none \
    --gateway --gateway-listen "127.0.0.1:$PORT" >/dev/null
trap '"$TERN" cluster down --dir "$DIR" >/dev/null 2>&1' EXIT
sample
python3 -c "
value = 'x' * 100
for i in range($KEYS):
    key = f'k{i}'
    print(f'*5\r\n\$3\r\nSET\r\n\${len(key)}\r\n{key}\r\n\$100\r\n{value}\r\n\$2\r\nEX\r\n\$1\r\n8\r', end='\n')
" | redis-cli -p "$PORT" --pipe | tail -1
sample
quiet=0
while [ "$quiet" -lt 3 ]; do
    sleep 1
    line=$(sample)
    echo "$line"
    case "$line" in *" live_keys=0 "*) quiet=$((quiet + 1)) ;; esac
done
