# shellcheck shell=bash
# Shared by scripts/run, scripts/test and scripts/pg. Source it from the repo root
# with `set -euo pipefail` in force. It installs the EXIT/INT/TERM/HUP traps:
# register clean-up functions with relay_defer, never with `trap` directly.

relay_say() { printf '%s\n' "$*"; }
relay_warn() { printf 'WARNING: %s\n' "$*" >&2; }
relay_die() {
    printf 'ERROR: %s\n' "$*" >&2
    exit 1
}
relay_header() { printf '\n==> %s\n' "$*"; }

# --- clean-up on exit, whatever happens -------------------------------------------------------

# relay_defer FUNCTION: run FUNCTION when the script exits (last registered runs first).
# Each function must be idempotent and must not fail the exit.
relay_defer() { _relay_cleanups+=("$1"); }

_relay_on_exit() {
    local rc=$? i
    trap '' INT TERM HUP # a second Ctrl-C must not interrupt the clean-up
    for ((i = ${#_relay_cleanups[@]} - 1; i >= 0; i--)); do
        "${_relay_cleanups[i]}" || true
    done
    exit "$rc"
}
# Start a fresh clean-up list with its traps. A ( subshell ) does not keep its parent's
# traps, so a subshell that defers anything calls this first.
relay_init_traps() {
    _relay_cleanups=()
    trap _relay_on_exit EXIT
    trap 'exit 130' INT
    trap 'exit 143' TERM
    trap 'exit 129' HUP
}
relay_init_traps

# --- Debian packages ------------------------------------------------------------------------

# relay_have_package PKG: is Debian package PKG, or what it provides, already here?
relay_have_package() {
    local pkg=$1
    if dpkg-query -W -f='${Status}\n' "$pkg" 2>/dev/null | grep -qx 'install ok installed'; then
        return 0
    fi
    case $pkg in
        postgresql) # server binaries may be there without the metapackage
            command -v initdb >/dev/null 2>&1 ||
                compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null ;;
        *) command -v "$pkg" >/dev/null 2>&1 ;;
    esac
}

_relay_apt_updated=0
_relay_policy_backup=""
_relay_policy_ours=0
_relay_sudo=()
readonly _relay_policy=/usr/sbin/policy-rc.d
readonly _relay_policy_mark='# relay scripts: temporary, keeps services from starting'

# Put a policy-rc.d that exits 101 in place, so installs start no service; a policy
# that was there already is moved aside and put back by _relay_policy_restore.
# (Called in a || list, where set -e is off: each step checks for itself.)
_relay_policy_install() {
    if [ "$_relay_policy_ours" = 1 ]; then return 0; fi
    relay_defer _relay_policy_restore
    if [ -e "$_relay_policy" ] || [ -L "$_relay_policy" ]; then
        _relay_policy_backup=$(mktemp -u "$_relay_policy.relay-saved.XXXXXX") || return 1
        "${_relay_sudo[@]}" mv "$_relay_policy" "$_relay_policy_backup" || return 1
    fi
    _relay_policy_ours=1
    printf '#!/bin/sh\n%s\nexit 101\n' "$_relay_policy_mark" |
        "${_relay_sudo[@]}" tee "$_relay_policy" >/dev/null || return 1
    "${_relay_sudo[@]}" chmod 755 "$_relay_policy"
}

_relay_policy_restore() {
    [ "$_relay_policy_ours" = 1 ] || return 0
    _relay_policy_ours=0
    if grep -qxF "$_relay_policy_mark" "$_relay_policy" 2>/dev/null; then
        "${_relay_sudo[@]}" rm -f "$_relay_policy"
    fi
    if [ -n "$_relay_policy_backup" ]; then
        "${_relay_sudo[@]}" mv "$_relay_policy_backup" "$_relay_policy"
        _relay_policy_backup=""
    fi
}

# relay_apt_install PKG...: install the packages that are missing, non-interactively and
# without starting services. Returns non-zero (after a warning) when it cannot; never exits.
relay_apt_install() {
    local pkg missing=()
    for pkg in "$@"; do
        relay_have_package "$pkg" || missing+=("$pkg")
    done
    [ ${#missing[@]} -eq 0 ] && return 0

    if ! command -v apt-get >/dev/null 2>&1; then
        relay_warn "apt-get is not available; not installing: ${missing[*]}"
        return 1
    fi
    _relay_sudo=()
    if [ "$EUID" -ne 0 ]; then
        if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
            _relay_sudo=(sudo -n)
        else
            relay_warn "not root and no password-less sudo; not installing: ${missing[*]}"
            return 1
        fi
    fi

    relay_say "Installing Debian packages: ${missing[*]}"
    local log rc=0
    log=$(mktemp "${TMPDIR:-/tmp}/relay-apt.XXXXXX")
    _relay_apt_log=$log
    relay_defer _relay_apt_log_rm
    local -a apt=("${_relay_sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get -q
        -o DPkg::Lock::Timeout=300)
    _relay_policy_install || rc=$?
    if [ "$rc" -eq 0 ] && [ "$_relay_apt_updated" = 0 ]; then
        "${apt[@]}" update </dev/null >>"$log" 2>&1 || rc=$?
        [ "$rc" -eq 0 ] && _relay_apt_updated=1
    fi
    if [ "$rc" -eq 0 ]; then
        "${apt[@]}" install -y --no-install-recommends \
            -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold \
            "${missing[@]}" </dev/null >>"$log" 2>&1 || rc=$?
    fi
    _relay_policy_restore
    if [ "$rc" -ne 0 ]; then
        tail -n 15 "$log" >&2 || true
        relay_warn "apt-get failed (exit $rc); not installed: ${missing[*]}"
    fi
    _relay_apt_log_rm
    return "$rc"
}

_relay_apt_log=""
_relay_apt_log_rm() {
    if [ -n "$_relay_apt_log" ]; then rm -f "$_relay_apt_log"; fi
    _relay_apt_log=""
}

# --- the virtualenv -----------------------------------------------------------------------------

# Print the first python3 (3.11 or newer) found: $PYTHON, python3, python3.13 .. python3.11.
relay_find_python() {
    local py
    for py in ${PYTHON:-} python3 python3.13 python3.12 python3.11; do
        if command -v "$py" >/dev/null 2>&1 &&
            "$py" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
            command -v "$py"
            return 0
        fi
    done
    return 1
}

_relay_venv_ok() {
    [ -x .venv/bin/python ] &&
        .venv/bin/python -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null
}

# Is STAMP there and no older than pyproject.toml?
_relay_stamp_fresh() { [ -f "$1" ] && ! [ pyproject.toml -nt "$1" ]; }

_relay_make_venv() {
    local py ver
    py=$(relay_find_python) || relay_die "Python 3.11 or newer is needed (set PYTHON=/path/to/python3)"
    relay_say "Creating .venv with $py"
    if "$py" -m venv --clear .venv >/dev/null 2>&1; then
        return 0
    fi
    # Debian ships ensurepip separately (python3.X-venv).
    ver=$("$py" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
    relay_apt_install "python$ver-venv" ||
        relay_die "'$py -m venv' failed; install the Debian package python$ver-venv"
    "$py" -m venv --clear .venv || relay_die "'$py -m venv .venv' failed"
}

_relay_ensure_venv_locked() {
    local target=$1 stamp=$2
    shift 2
    local fresh=0 s
    for s in "$stamp" "$@"; do
        if _relay_stamp_fresh "$s"; then fresh=1; fi
    done
    if ! _relay_venv_ok; then
        _relay_make_venv
    elif [ "$fresh" = 1 ] && [ -x .venv/bin/relay ]; then
        return 0
    fi
    # Editable installs of a pyproject-only project need pip 21.3 or newer.
    if ! .venv/bin/python -c 'import sys, pip
sys.exit(tuple(int(p) for p in pip.__version__.split(".")[:2]) < (21, 3))' 2>/dev/null; then
        .venv/bin/python -m pip install -q --disable-pip-version-check --upgrade pip ||
            relay_die "could not upgrade pip in .venv"
    fi
    relay_say "Installing $target into .venv"
    touch -r pyproject.toml "$stamp.new" # the pyproject.toml this install reads
    PIP_NO_INPUT=1 .venv/bin/python -m pip install -q --disable-pip-version-check -e "$target" ||
        relay_die "pip install -e '$target' failed"
    mv -f "$stamp.new" "$stamp"
}

# relay_ensure_venv [EXTRA]: make .venv and `pip install -e .[EXTRA]` into it when the install
# is missing or pyproject.toml is newer than the stamp. Safe to run concurrently (flock).
relay_ensure_venv() {
    local extra=${1:-} target=. stamp=.venv/.relay-installed
    local -a also_ok=()
    if [ -n "$extra" ]; then
        target=".[$extra]"
        stamp=".venv/.relay-installed-$extra"
    else
        also_ok=(.venv/.relay-installed-*) # an install with extras has the base too
    fi
    if command -v flock >/dev/null 2>&1; then
        (
            relay_init_traps
            flock 9
            _relay_ensure_venv_locked "$target" "$stamp" "${also_ok[@]}"
        ) 9<.
    else
        _relay_ensure_venv_locked "$target" "$stamp" "${also_ok[@]}"
    fi
}
