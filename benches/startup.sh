#!/usr/bin/env bash
# Measures quintet's cold start to SERVING (first start with initdb, then with the embedded
# cluster already initialised) and its idle RSS. Usage: benches/startup.sh [runs]
# Needs a release build (cargo build --release) and grpcurl.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=target/release/quintet
RUNS=${1:-5}
PORT=50061

now_ms() { date +%s%3N; }

wait_serving() {
    until grpcurl -plaintext -max-time 1 127.0.0.1:$PORT grpc.health.v1.Health/Check 2>/dev/null | grep -q '"SERVING"'; do
        sleep 0.01
    done
}

measure() { # $1 = data dir; sets MS to the time to SERVING, leaves the server running as $PID
    local start; start=$(now_ms)
    QUINTET_DATA_DIR="$1" QUINTET_LISTEN=127.0.0.1:$PORT QUINTET_LOG=warn "$BIN" >/dev/null 2>>/tmp/quintet-startup.log &
    PID=$!
    wait_serving
    MS=$(( $(now_ms) - start ))
}

stop() { kill -TERM "$PID"; wait "$PID"; }

first=(); warm=()
for i in $(seq "$RUNS"); do
    dir=$(mktemp -d /tmp/quintet-startup-XXXX)
    measure "$dir"; first+=("$MS"); stop
    measure "$dir"; warm+=("$MS")
    if [ "$i" -eq "$RUNS" ]; then
        sleep 2
        rss_quintet=$(awk '/VmRSS/ {print $2}' /proc/$PID/status)
        rss_pg=$(ps -o rss= --ppid "$PID" | awk '{s+=$1} END {print s}')
        rss_pg_children=$(for p in $(pgrep -P "$(pgrep -P "$PID" postgres | head -1)"); do ps -o rss= -p "$p"; done | awk '{s+=$1} END {print s+0}')
    fi
    stop
    rm -rf "$dir"
done
echo "first start (initdb) ms: ${first[*]}"
echo "warm start ms:           ${warm[*]}"
echo "idle RSS KiB: quintet=$rss_quintet postmaster=$rss_pg postgres-children=$rss_pg_children"
