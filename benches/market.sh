#!/usr/bin/env bash
# Market: SearchDatapods over generated published datapods at 64 concurrent clients (with
# EXPLAIN ANALYZE of the statement), then upload throughput with encryption next to ring's
# AES-256-GCM speed measured in the same run.
# Usage: benches/market.sh [data dir] [datapods] [upload MiB]   (needs cargo build --release)
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${1:-/tmp/quintet-market-bench}
DATAPODS=${2:-100000}
MIB=${3:-256}
rm -rf "$DATA"; mkdir -p "$DATA"

QUINTET_RATE_LIMIT_PER_SEC=0 QUINTET_ANONYMOUS_RATE_LIMIT_PER_SEC=0 QUINTET_DATA_DIR="$DATA" QUINTET_LISTEN=127.0.0.1:50073 QUINTET_LOG=warn target/release/quintet &
PID=$!
trap 'kill -TERM $PID; wait $PID' EXIT
until [ -s "$DATA/admin-token" ] && grpcurl -plaintext 127.0.0.1:50073 grpc.health.v1.Health/Check >/dev/null 2>&1; do sleep 0.1; done
export DATABASE_URL="postgres://quintet@localhost/quintet?host=$DATA/postgres"
echo "== seed-market ($DATAPODS datapods)"
target/release/quintet-bench seed-market --datapods "$DATAPODS"
echo "== market-search, 64 clients"
target/release/quintet-bench run market-search --target http://127.0.0.1:50073 -c 64 -d 15
echo "== market-upload"
target/release/quintet-bench market-upload --target http://127.0.0.1:50073 --mib "$MIB" --uploads 3
echo "server peak RSS: $(grep VmHWM /proc/$PID/status | awk '{print $2/1024 " MiB"}')"
