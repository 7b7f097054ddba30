#!/usr/bin/env bash
# Griot log streaming: one job's log throughput, then N followers of one job while lines are
# written at a fixed rate (delivery latency, server CPU and RSS). quintet-bench acts as the
# installation worker, so the server runs without workers and both share the embedded database.
# Usage: benches/griot.sh [data dir] [followers] [lines] [rate/s]   (needs cargo build --release)
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${1:-/tmp/quintet-griot-bench}
FOLLOWERS=${2:-1000}
LINES=${3:-100000}
RATE=${4:-100}
rm -rf "$DATA"; mkdir -p "$DATA"
# Followers hold one file descriptor each on the client side.
ulimit -n 65536 2>/dev/null || true

QUINTET_RATE_LIMIT_PER_SEC=0 QUINTET_ANONYMOUS_RATE_LIMIT_PER_SEC=0 QUINTET_DATA_DIR="$DATA" QUINTET_LISTEN=127.0.0.1:50072 QUINTET_LOG=warn QUINTET_GRIOT_WORKERS=0 \
    target/release/quintet &
PID=$!
trap 'kill -TERM $PID; wait $PID' EXIT
until [ -s "$DATA/admin-token" ] && grpcurl -plaintext 127.0.0.1:50072 grpc.health.v1.Health/Check >/dev/null 2>&1; do sleep 0.1; done
echo "== quintet-bench griot-logs (server idle RSS: $(grep VmRSS /proc/$PID/status | awk '{print $2/1024 " MiB"}'))"
target/release/quintet-bench griot-logs --target http://127.0.0.1:50072 \
    --admin-token "$(cat "$DATA/admin-token")" \
    --database-url "postgres://quintet@localhost/quintet?host=$DATA/postgres" \
    --followers "$FOLLOWERS" --lines "$LINES" --rate "$RATE" --server-pid "$PID"
