# shellcheck shell=bash
# A throwaway PostgreSQL server for tests: scripts/test and scripts/pg source this after
# scripts/lib/common.sh. relay_pg_start starts it and exports RELAY_TEST_POSTGRES_URL; it stops
# and its directory goes when the script exits, however it exits.

RELAY_PG_OS_USER=${RELAY_PG_OS_USER:-postgres} # who runs the server when we are root
RELAY_PG_TMP=""                                # the server's temp dir while it exists
RELAY_PG_BIN=""
RELAY_PG_PORT=""

# Print the directory holding initdb, pg_ctl and postgres: the one of the initdb on PATH,
# else the newest /usr/lib/postgresql/*/bin.
relay_pg_bindir() {
    local initdb dir
    if initdb=$(command -v initdb 2>/dev/null); then
        dir=$(dirname "$(readlink -f "$initdb")")
        if [ -x "$dir/pg_ctl" ] && [ -x "$dir/postgres" ]; then
            printf '%s\n' "$dir"
            return 0
        fi
    fi
    while IFS= read -r dir; do
        if [ -x "$dir/initdb" ] && [ -x "$dir/pg_ctl" ] && [ -x "$dir/postgres" ]; then
            printf '%s\n' "$dir"
            return 0
        fi
    done < <(compgen -G '/usr/lib/postgresql/*/bin' | sort -rV)
    return 1
}

# Run a command as the server's OS user (PostgreSQL refuses to run as root).
_relay_pg_as_owner() {
    if [ "$EUID" -ne 0 ]; then
        "$@"
    elif command -v runuser >/dev/null 2>&1; then
        runuser -u "$RELAY_PG_OS_USER" -- "$@"
    else
        su "$RELAY_PG_OS_USER" -s /bin/bash -c "$(printf '%q ' "$@")"
    fi
}

_relay_pg_ensure_os_user() {
    [ "$EUID" -eq 0 ] || return 0
    if id -u "$RELAY_PG_OS_USER" >/dev/null 2>&1; then return 0; fi
    relay_say "Creating the OS user $RELAY_PG_OS_USER"
    local -a group=(--user-group)
    if getent group "$RELAY_PG_OS_USER" >/dev/null; then group=(--gid "$RELAY_PG_OS_USER"); fi
    useradd --system "${group[@]}" --no-create-home --home-dir /var/lib/postgresql \
        --shell /bin/bash "$RELAY_PG_OS_USER"
}

_relay_pg_free_port() {
    local py=python3
    if [ -x .venv/bin/python ]; then py=.venv/bin/python; fi
    "$py" -c 'import socket
s = socket.socket()
s.bind(("127.0.0.1", 0))
print(s.getsockname()[1])'
}

_relay_pg_ctl() { (cd "$RELAY_PG_TMP" && _relay_pg_as_owner "$RELAY_PG_BIN/pg_ctl" -D data -s "$@"); }

# Is PID a live postgres process? (A stopped postmaster can stay a zombie a while after
# pg_ctl stop returns, until init reaps it: that one does not count.)
_relay_pg_alive() {
    local stat
    stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
    [[ $stat == "$1 (postgres) "[!Z]* ]]
}

# Stop the server if it runs, whatever state it is in, and remove its directory. Idempotent.
relay_pg_stop() {
    [ -n "$RELAY_PG_TMP" ] || return 0
    local pid=""
    if [ -f "$RELAY_PG_TMP/data/postmaster.pid" ]; then
        pid=$(head -n 1 "$RELAY_PG_TMP/data/postmaster.pid" 2>/dev/null || true)
        _relay_pg_ctl -m fast -w -t 30 stop >/dev/null 2>&1 ||
            _relay_pg_ctl -m immediate -w -t 10 stop >/dev/null 2>&1 || true
    fi
    if [ -n "$pid" ] && _relay_pg_alive "$pid"; then
        relay_warn "PostgreSQL (pid $pid) did not stop; killing it"
        kill -KILL "$pid" 2>/dev/null || true
    fi
    rm -rf "$RELAY_PG_TMP"
    RELAY_PG_TMP=""
}

# _relay_pg_fail MESSAGE LOG...: show the end of each LOG (in the temp dir) and exit.
_relay_pg_fail() {
    local msg=$1 log
    shift
    for log in "$@"; do
        if [ -s "$RELAY_PG_TMP/$log" ]; then
            printf -- '--- %s (last lines)\n' "$log" >&2
            tail -n 20 "$RELAY_PG_TMP/$log" >&2 || true
        fi
    done
    relay_die "$msg"
}

# relay_pg_start: initdb and start a server on 127.0.0.1 at a free port (socket in its temp
# dir, fsync on, max_connections=200, trust auth), create the database relay_test, and export
# RELAY_TEST_POSTGRES_URL. Exits the script on any failure: call it as a plain command (in a
# condition set -e would be off inside it), after relay_pg_bindir has found the binaries.
relay_pg_start() {
    RELAY_PG_BIN=$(relay_pg_bindir) || relay_die "no PostgreSQL server binaries found"
    _relay_pg_ensure_os_user
    relay_defer relay_pg_stop
    RELAY_PG_TMP=$(mktemp -d "${TMPDIR:-/tmp}/relay-pg.XXXXXX")
    if [ "$EUID" -eq 0 ]; then
        chown "$RELAY_PG_OS_USER:" "$RELAY_PG_TMP"
        if ! _relay_pg_as_owner test -w "$RELAY_PG_TMP"; then # e.g. TMPDIR under /root
            rm -rf "$RELAY_PG_TMP"
            RELAY_PG_TMP=$(mktemp -d /tmp/relay-pg.XXXXXX)
            chown "$RELAY_PG_OS_USER:" "$RELAY_PG_TMP"
        fi
    fi

    (cd "$RELAY_PG_TMP" && _relay_pg_as_owner "$RELAY_PG_BIN/initdb" -D "$RELAY_PG_TMP/data" \
        -U postgres --auth=trust --encoding=UTF8 --locale=C --no-sync) \
        >"$RELAY_PG_TMP/initdb.log" 2>&1 || _relay_pg_fail "initdb failed" initdb.log
    # Only the socket in the temp dir and 127.0.0.1 are open, both without a password.
    printf '%s\n' 'local all all trust' 'host all all 127.0.0.1/32 trust' \
        >"$RELAY_PG_TMP/data/pg_hba.conf"
    cat >>"$RELAY_PG_TMP/data/postgresql.conf" <<EOF

# relay scripts/lib/pg.sh
listen_addresses = '127.0.0.1'
unix_socket_directories = '${RELAY_PG_TMP//\'/\'\'}'
max_connections = 200
fsync = on
synchronous_commit = on
full_page_writes = on
EOF

    local attempt
    for attempt in 1 2 3; do
        RELAY_PG_PORT=$(_relay_pg_free_port)
        if _relay_pg_ctl -l "$RELAY_PG_TMP/postgres.log" -o "-p $RELAY_PG_PORT" -w -t 60 start \
            </dev/null >>"$RELAY_PG_TMP/pg_ctl.log" 2>&1; then
            break
        fi
        # Another process may have taken the port between choosing it and binding it.
        if [ "$attempt" -lt 3 ] && grep -q 'could not bind\|already in use' \
            "$RELAY_PG_TMP/postgres.log" 2>/dev/null; then
            _relay_pg_ctl -m immediate -w stop >/dev/null 2>&1 || true
            continue
        fi
        _relay_pg_fail "PostgreSQL did not start" pg_ctl.log postgres.log
    done

    "$RELAY_PG_BIN/createdb" -h 127.0.0.1 -p "$RELAY_PG_PORT" -U postgres relay_test </dev/null ||
        _relay_pg_fail "createdb relay_test failed" postgres.log
    export RELAY_TEST_POSTGRES_URL="postgresql+psycopg://postgres@127.0.0.1:$RELAY_PG_PORT/relay_test"
}
