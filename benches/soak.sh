#!/usr/bin/env bash
# Soak: every service at once from many concurrent clients (1,000 for 60 s by default), with a
# token flooding unary calls and slow readers of the server's streams alongside, against a
# release server on a fresh data directory and its embedded PostgreSQL. Prints per-operation
# counts, errors and latency, what happened to the abusive clients, and the server's RSS and
# open file descriptors before, at the end of and after the load; exits non-zero when a
# well-behaved call failed, the flood was never rate limited, a slow reader ended with another
# error, or descriptors leaked.
# Usage: benches/soak.sh [data dir] [clients] [seconds] [more quintet-bench soak flags...]
#   e.g. benches/soak.sh /tmp/quintet-soak 1000 60 --flood-rate 0   (the same load, no flood)
# (needs cargo build --release --bins)
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${1:-/tmp/quintet-soak}
CLIENTS=${2:-1000}
SECONDS_OF_LOAD=${3:-60}
shift $(( $# < 3 ? $# : 3 ))
PORT=50075
# A stalled firehose consumer is cut off after this long (the default is 30 s); short enough
# that the slow readers are disconnected inside the window.
FIREHOSE_STALL=10
# Every soak client connects from 127.0.0.1, so calls without a token (health checks, Griot's
# public package reads) would all share one per-IP bucket of 2,000/s: raise it. Clients with
# accounts carry their own token and stay under the default per-token limit (500/s, burst 1,000);
# the admin token's calls (store, Griot writes, admin) are paced by the bench to 400/s in all.
ANONYMOUS_RATE=1000000
# The store has no users: its 120 clients, Griot's writers and the admin clients (140 in all)
# share the admin token, more than the default 128 calls in flight per token. One user of the
# store would not: give every token room (the flooding token then has up to 256 in flight).
IN_FLIGHT=256
rm -rf "$DATA"; mkdir -p "$DATA"
# One connection per client on both sides, plus the database pool.
ulimit -n 65536 2>/dev/null || true

QUINTET_DATA_DIR="$DATA" QUINTET_LISTEN=127.0.0.1:$PORT QUINTET_LOG=warn \
    QUINTET_PDS_FIREHOSE_STALL_SECS=$FIREHOSE_STALL \
    QUINTET_ANONYMOUS_RATE_LIMIT_PER_SEC=$ANONYMOUS_RATE QUINTET_RATE_LIMIT_IN_FLIGHT=$IN_FLIGHT \
    target/release/quintet 2>"$DATA/server.log" &
PID=$!
trap 'kill -TERM $PID 2>/dev/null; wait $PID' EXIT
until [ -s "$DATA/admin-token" ] && grpcurl -plaintext 127.0.0.1:$PORT grpc.health.v1.Health/Check >/dev/null 2>&1; do
    kill -0 $PID 2>/dev/null || { cat "$DATA/server.log"; exit 1; }
    sleep 0.1
done
STATUS=0
target/release/quintet-bench soak --target http://127.0.0.1:$PORT \
    --admin-token "$(cat "$DATA/admin-token")" \
    --database-url "postgres://quintet@localhost/quintet?host=$DATA/postgres" \
    --clients "$CLIENTS" --duration "$SECONDS_OF_LOAD" --server-pid "$PID" \
    --firehose-stall-secs $FIREHOSE_STALL --rate-limit-per-sec 500 "$@" || STATUS=$?
# The server's warnings, by kind (without colours, timestamps and fields), and the longest wait
# for a database connection it logged (sqlx warns past 2 s; the pool gives up at 5 s).
LOG=$(sed -E 's/\x1b\[[0-9;]*m//g' "$DATA/server.log")
echo "== server log: $(grep -c . <<<"$LOG" || true) lines at warn and above"
[ -z "$LOG" ] || sed -E 's/^[^ ]+ +//; s/ (db\.statement|rows_affected|elapsed|acquired_after_secs)=.*//' <<<"$LOG" |
    sort | uniq -c | sort -rn | head -20 || true
WAIT=$(grep -o 'acquired_after_secs=[0-9.]*' <<<"$LOG" | cut -d= -f2 | sort -n | tail -1 || true)
[ -n "$WAIT" ] && echo "longest logged wait for a database connection: $WAIT s"
exit $STATUS
