#!/usr/bin/env bash
# PDS: record writes per second (one repository; many in parallel), GetRecord latency, and the
# export of a 100,000-record repository, against a release server on its embedded PostgreSQL.
# Usage: benches/pds.sh [data dir] [records] [parallel repos] [seconds]   (needs cargo build --release)
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${1:-/tmp/quintet-pds-bench}
RECORDS=${2:-100000}
REPOS=${3:-64}
SECONDS_PER_PHASE=${4:-10}
rm -rf "$DATA"; mkdir -p "$DATA"
QUINTET_RATE_LIMIT_PER_SEC=0 QUINTET_ANONYMOUS_RATE_LIMIT_PER_SEC=0 QUINTET_DATA_DIR="$DATA" QUINTET_LISTEN=127.0.0.1:50073 QUINTET_LOG=warn target/release/quintet &
PID=$!
trap 'kill -TERM $PID; wait $PID' EXIT
until grpcurl -plaintext 127.0.0.1:50073 grpc.health.v1.Health/Check >/dev/null 2>&1; do sleep 0.1; done
echo "== quintet-bench pds (server idle RSS: $(grep VmRSS /proc/$PID/status | awk '{print $2/1024 " MiB"}'))"
target/release/quintet-bench pds --target http://127.0.0.1:50073 --records "$RECORDS" \
    --repos "$REPOS" --seconds "$SECONDS_PER_PHASE" --server-pid "$PID"
