#!/usr/bin/env bash
# Store throughput next to this machine's limits, in one run: dd write/read of the data
# directory's disk, ring's SHA-256 speed (printed by quintet-bench), then PutObject/GetObject of
# one large content and of many small objects, with the server's peak RSS.
# Usage: benches/store.sh [data dir] [large MiB] [small objects]   (needs cargo build --release)
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${1:-/tmp/quintet-store-bench}
LARGE=${2:-1024}
SMALL=${3:-10000}
rm -rf "$DATA"; mkdir -p "$DATA"

echo "== dd on $(df --output=source "$DATA" | tail -1) ($DATA)"
dd if=/dev/zero of="$DATA/dd.test" bs=1M count="$LARGE" conv=fdatasync 2>&1 | tail -1 | sed 's/^/write (fdatasync): /'
dd if="$DATA/dd.test" of=/dev/null bs=1M iflag=direct 2>&1 | tail -1 | sed 's/^/read (O_DIRECT):   /'
dd if="$DATA/dd.test" of=/dev/null bs=1M 2>&1 | tail -1 | sed 's/^/read (page cache): /'
rm -f "$DATA/dd.test"

QUINTET_RATE_LIMIT_PER_SEC=0 QUINTET_ANONYMOUS_RATE_LIMIT_PER_SEC=0 QUINTET_DATA_DIR="$DATA" QUINTET_LISTEN=127.0.0.1:50071 QUINTET_LOG=warn target/release/quintet &
PID=$!
trap 'kill -TERM $PID; wait $PID' EXIT
until [ -s "$DATA/admin-token" ] && grpcurl -plaintext 127.0.0.1:50071 grpc.health.v1.Health/Check >/dev/null 2>&1; do sleep 0.1; done
echo "== quintet-bench store"
target/release/quintet-bench store --target http://127.0.0.1:50071 --admin-token "$(cat "$DATA/admin-token")" \
    --large-mib "$LARGE" --small "$SMALL" --server-pid "$PID"
