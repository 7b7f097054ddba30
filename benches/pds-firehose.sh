#!/usr/bin/env bash
# PDS firehose: events per second to 1 and to 100 consumers while 16 writers commit records, and
# write-to-delivery latency, against a release server on its embedded PostgreSQL.
# Usage: benches/pds-firehose.sh [data dir] [seconds]   (needs cargo build --release)
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${1:-/tmp/quintet-firehose-bench}
SECONDS_PER_RUN=${2:-10}
rm -rf "$DATA"; mkdir -p "$DATA"
ulimit -n 65536 2>/dev/null || true
QUINTET_RATE_LIMIT_PER_SEC=0 QUINTET_ANONYMOUS_RATE_LIMIT_PER_SEC=0 QUINTET_DATA_DIR="$DATA" QUINTET_LISTEN=127.0.0.1:50074 QUINTET_LOG=warn target/release/quintet &
PID=$!
trap 'kill -TERM $PID; wait $PID' EXIT
until grpcurl -plaintext 127.0.0.1:50074 grpc.health.v1.Health/Check >/dev/null 2>&1; do sleep 0.1; done
for CONSUMERS in 1 100; do
    echo "== quintet-bench pds-firehose, $CONSUMERS consumer(s)"
    target/release/quintet-bench pds-firehose --target http://127.0.0.1:50074 \
        --consumers "$CONSUMERS" --writers 16 --seconds "$SECONDS_PER_RUN" --server-pid "$PID"
done
