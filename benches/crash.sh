#!/usr/bin/env bash
# Crash safety: quintet-bench runs its own PostgreSQL and the real server on it, drives writes on
# every service at once, SIGKILLs the server (and PostgreSQL, leaving the server running) at
# random moments while every service has writes in flight, restarts them, and checks after every
# restart that no acknowledged write is lost, nothing half-written is visible, no background
# work is stuck and every denormalised counter matches what it counts. Exits non-zero on any
# violation, keeping its work directory (PostgreSQL's and the server's data and logs).
# Usage: benches/crash.sh [quintet kills] [PostgreSQL kills] [seed]   (needs cargo build --release)
set -euo pipefail
cd "$(dirname "$0")/.."
KILLS=${1:-25}
PG_KILLS=${2:-5}
SEED=${3:-}
target/release/quintet-bench crash --server-bin target/release/quintet \
    --kills "$KILLS" --pg-kills "$PG_KILLS" ${SEED:+--seed "$SEED"}
