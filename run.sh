#!/usr/bin/env bash
# hostbus: the one entry script. On a fresh Debian or Ubuntu machine it installs what is
# missing (RabbitMQ from the distribution, a Python >= 3.11 virtual environment), starts
# what is stopped, and then:
#   ./run.sh demo    broker + an agent for this host + the console showing it working
#   ./run.sh test    the whole test suite (what .ci/run runs)
#   ./run.sh stop    stop the agent and provisioner the demo started
# Run as root, or as a user with sudo.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")"
ROOT=$(pwd)
RUN_DIR="$ROOT/.run"
VENV="$ROOT/.venv"
AMQP_URL="${HOSTBUS_BROKER_URL:-amqp://guest:guest@127.0.0.1:5672/hostbus}"
ADMIN_URL="${HOSTBUS_CONSOLE_ADMIN_URL:-http://guest:guest@127.0.0.1:15672}"

say() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }
die() { printf 'run.sh: %s\n' "$*" >&2; exit 1; }

if [ "$(id -u)" -eq 0 ]; then SUDO=(); else
  command -v sudo >/dev/null || die "not root and sudo is missing: run as root"
  SUDO=(sudo)
fi

APT_UPDATED=
apt_install() {
  command -v apt-get >/dev/null || die "apt-get not found: install $* by hand (Debian/Ubuntu expected)"
  if [ -z "$APT_UPDATED" ]; then
    say "apt-get update"
    "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -q >/dev/null
    APT_UPDATED=1
  fi
  say "installing $*"
  "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$@" >/dev/null
}

# ------------------------------------------------------------------------ Python
pick_python() {
  for py in python3.13 python3.12 python3.11 python3; do
    if command -v "$py" >/dev/null && "$py" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null \
       && "$py" -c 'import venv, ensurepip' 2>/dev/null; then
      command -v "$py"; return 0
    fi
  done
  return 1
}

ensure_python() {
  if ! PYTHON=$(pick_python); then
    apt_install python3 python3-venv            # Debian 12, Ubuntu 24.04: 3.11 or newer
    if ! PYTHON=$(pick_python); then            # Ubuntu 22.04: python3 is 3.10
      apt_install python3.11 python3.11-venv
      PYTHON=$(pick_python) || die "could not install Python >= 3.11 with venv"
    fi
  fi
  local stamp="$VENV/.hostbus-installed"
  local want; want=$(sha256sum < pyproject.toml | cut -c1-16)
  if [ ! -x "$VENV/bin/python" ]; then
    say "creating the virtual environment .venv ($("$PYTHON" --version))"
    "$PYTHON" -m venv "$VENV"
  fi
  if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    ensure_build_deps
    say "installing hostbus and its test tools into .venv"
    "$VENV/bin/python" -m pip install -q --upgrade pip >/dev/null
    "$VENV/bin/python" -m pip install -q -e ".[test]"
    echo "$want" > "$stamp"
  fi
}

# The libvirt bindings are compiled against the system's libvirt on install.
ensure_build_deps() {
  local need=()
  { command -v pkg-config >/dev/null && pkg-config --exists libvirt; } || need+=(libvirt-dev pkg-config)
  command -v gcc >/dev/null || need+=(gcc)
  "$PYTHON" - <<'PY' || need+=("$(basename "$PYTHON")-dev")
import os, sys, sysconfig
sys.exit(not os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")))
PY
  [ ${#need[@]} -eq 0 ] || apt_install "${need[@]}"
}

# ---------------------------------------------------------------------- RabbitMQ
broker_up() { "${SUDO[@]}" rabbitmq-diagnostics -q ping >/dev/null 2>&1; }

http_ok() { "$VENV/bin/python" - "$1" <<'PY'
import sys, urllib.request, base64
from urllib.parse import urlsplit
u = urlsplit(sys.argv[1])
req = urllib.request.Request(f"{u.scheme}://{u.hostname}:{u.port}/api/overview")
req.add_header("Authorization", "Basic " + base64.b64encode(f"{u.username}:{u.password}".encode()).decode())
try:
    urllib.request.urlopen(req, timeout=2).read()
except Exception:
    sys.exit(1)
PY
}

wait_for() {  # wait_for SECONDS DESCRIPTION COMMAND...
  local limit=$1 what=$2; shift 2
  local i=0
  until "$@"; do
    i=$((i + 1))
    [ "$i" -ge "$limit" ] && die "$what did not come up within ${limit}s"
    sleep 1
  done
}

ensure_rabbitmq() {
  if ! command -v rabbitmq-server >/dev/null && [ ! -x /usr/sbin/rabbitmq-server ]; then
    apt_install rabbitmq-server
  fi
  local version; version=$(installed_rabbitmq_version)
  [ -n "$version" ] || die "rabbitmqctl version failed: is rabbitmq-server installed?"
  write_amqp10_conf "$version" "$(broker_conf)"
  if ! broker_up; then
    say "starting RabbitMQ"
    if [ -d /run/systemd/system ]; then
      "${SUDO[@]}" systemctl start rabbitmq-server
    else
      "${SUDO[@]}" rabbitmq-server -detached
    fi
    wait_for 90 "RabbitMQ" broker_up
    STARTED_BROKER=1
  fi
  if ! "${SUDO[@]}" rabbitmq-plugins list -e -m 2>/dev/null | grep -qx rabbitmq_management; then
    say "enabling the RabbitMQ management plugin (broker setup uses its HTTP API)"
    "${SUDO[@]}" rabbitmq-plugins enable rabbitmq_management >/dev/null
  fi
  wait_for 60 "the RabbitMQ management API" http_ok "$ADMIN_URL"
  ensure_amqp10
}

# AMQP 1.0 (amqp10:// URLs) must not let a client in without credentials. How depends on
# the broker's version, and a key the running version does not know stops it from
# booting at its next restart, so only that version's key is written:
#   3.x: AMQP 1.0 is the rabbitmq_amqp1_0 plugin; amqp1_0.default_user = none.
#   4.x: AMQP 1.0 is built in; anonymous_login_user = none (no SASL ANONYMOUS).
# broker_config/amqp10-rabbitmq3.conf and amqp10-rabbitmq4.conf say the same. The
# setting goes into the file (for the next boot) and into the running node (a plugin
# enabled on a running node does not read rabbitmq.conf again), and is checked.
broker_conf() {
  local file
  file=$(sed -n 's/^\(RABBITMQ_\)\{0,1\}CONFIG_FILE=//p' /etc/rabbitmq/rabbitmq-env.conf 2>/dev/null | tr -d '"' | tail -1)
  file=${file:-/etc/rabbitmq/rabbitmq}
  printf '%s.conf\n' "${file%.conf}"
}

# The installed RabbitMQ's version (its CLI is from the same package): known before the
# broker is started, so a setting it would refuse can be fixed first.
installed_rabbitmq_version() { "${SUDO[@]}" rabbitmqctl version 2>/dev/null | tail -1; }

# write_amqp10_conf VERSION FILE: FILE turns off anonymous AMQP 1.0 logins the way
# RabbitMQ VERSION wants, and holds no key of the other major version.
write_amqp10_conf() {
  local version=$1 conf=$2 key
  if [ "${version%%.*}" -ge 4 ]; then
    key=anonymous_login_user
    # The 3.x key, written by an older run.sh before the broker was upgraded, would stop
    # 4.x from booting ("unknown variable"): keep it only as a comment.
    if "${SUDO[@]}" grep -qs '^amqp1_0\.default_user' "$conf"; then
      say "RabbitMQ $version: commenting out amqp1_0.default_user in $conf (a 3.x key; 4.x does not boot with it)"
      "${SUDO[@]}" sed -i 's/^amqp1_0\.default_user/# RabbitMQ 3.x only: &/' "$conf"
    fi
  else
    key=amqp1_0.default_user
    if "${SUDO[@]}" grep -qs '^anonymous_login_user' "$conf"; then
      say "RabbitMQ $version: commenting out anonymous_login_user in $conf (a 4.x key; 3.x does not boot with it)"
      "${SUDO[@]}" sed -i 's/^anonymous_login_user/# RabbitMQ 4.x only: &/' "$conf"
    fi
  fi
  if ! "${SUDO[@]}" grep -qs "^${key//./\\.} *= *none" "$conf"; then
    say "AMQP 1.0 on RabbitMQ $version: no anonymous login ($key = none in $conf)"
    printf '\n# hostbus: AMQP 1.0 clients must log in (no anonymous guest)\n%s = none\n' "$key" \
      | "${SUDO[@]}" tee -a "$conf" >/dev/null
  fi
}

# The running node, after write_amqp10_conf: the 3.x plugin enabled, the setting in force.
ensure_amqp10() {
  local version app env_key
  version=$(installed_rabbitmq_version)
  if [ "${version%%.*}" -ge 4 ]; then
    app=rabbit env_key=anonymous_login_user
  else
    app=rabbitmq_amqp1_0 env_key=default_user
    if ! "${SUDO[@]}" rabbitmq-plugins list -e -m 2>/dev/null | grep -qx rabbitmq_amqp1_0; then
      say "enabling the RabbitMQ AMQP 1.0 plugin (for amqp10:// agents and consoles)"
      "${SUDO[@]}" rabbitmq-plugins enable rabbitmq_amqp1_0 >/dev/null
    fi
  fi
  "${SUDO[@]}" rabbitmqctl -q eval "application:set_env($app, $env_key, none)." >/dev/null
  "${SUDO[@]}" rabbitmqctl -q eval "application:get_env($app, $env_key)." \
    | grep -q none || die "could not turn off anonymous AMQP 1.0 logins on the broker"
}

# -------------------------------------------------------------------- hypervisor
# The tests drive one real QEMU domain (software emulation) through libvirtd.
libvirtd_up() { "${SUDO[@]}" virsh -c qemu:///system uri >/dev/null 2>&1; }

ensure_hypervisor() {
  local need=()
  command -v libvirtd >/dev/null || [ -x /usr/sbin/libvirtd ] || need+=(libvirt-daemon-system)
  command -v qemu-system-x86_64 >/dev/null || need+=(qemu-system-x86)
  # Live migration tests (scripts/hypervisor_pair.py): namespaces and a veth pair need
  # iproute2, the test guest's boot sector is assembled with binutils.
  command -v ip >/dev/null || need+=(iproute2)
  command -v as >/dev/null || need+=(binutils)
  [ ${#need[@]} -eq 0 ] || apt_install --no-install-recommends "${need[@]}"
  # udev hands /dev/kvm to group kvm (which Debian's libvirt-qemu user is in); containers
  # often leave it root-only, and then libvirt re-probes QEMU on every call: about 40 s
  # to define a domain instead of milliseconds.
  if [ -e /dev/kvm ] && [ "$(stat -c %G /dev/kvm)" != kvm ] && getent group kvm >/dev/null; then
    say "giving /dev/kvm to group kvm (mode 0660), as udev does"
    "${SUDO[@]}" chgrp kvm /dev/kvm && "${SUDO[@]}" chmod 0660 /dev/kvm
  fi
  if ! libvirtd_up; then
    say "starting libvirtd and virtlogd"
    if [ -d /run/systemd/system ]; then
      "${SUDO[@]}" systemctl start virtlogd libvirtd
    else
      pgrep -x virtlogd >/dev/null || "${SUDO[@]}" /usr/sbin/virtlogd -d
      pgrep -x libvirtd >/dev/null || "${SUDO[@]}" /usr/sbin/libvirtd -d
    fi
    wait_for 60 "libvirtd" libvirtd_up
  fi
}

# ------------------------------------------------------------- RabbitMQ 4 (tests)
# The core of the integration suite also runs against RabbitMQ 4.0, Debian 13's, on
# nodes of the tests' own started from a Debian 13 root (tests/rabbit_node.py runs them
# with chroot, in a mount namespace of their own). The root is built once with
# debootstrap and kept in .cache/ (about 450 MB); HOSTBUS_TEST_RABBITMQ4_ROOT points at
# another one. Delete the folder to build it again.
RABBITMQ4_ROOT="${HOSTBUS_TEST_RABBITMQ4_ROOT:-$ROOT/.cache/rabbitmq4-root}"

ensure_rabbitmq4_root() {
  [ -f "$RABBITMQ4_ROOT/.hostbus-ready" ] && return 0
  command -v debootstrap >/dev/null || apt_install debootstrap
  command -v unshare >/dev/null || apt_install util-linux
  local build="$RABBITMQ4_ROOT.build" started=$SECONDS
  say "building a Debian 13 root with RabbitMQ 4 for the tests in $RABBITMQ4_ROOT (once)"
  # In a mount namespace of its own: whatever debootstrap or a package script mounts
  # (/proc) goes away with it, even when interrupted, so the rm -rf below is safe.
  "${SUDO[@]}" unshare --mount --propagation private sh -euc '
    build=$1
    rm -rf "$build"
    mkdir -p "$(dirname "$build")"
    debootstrap --variant=minbase trixie "$build" >"$build.log" 2>&1 \
      || { tail -20 "$build.log" >&2; exit 1; }
    # Packages must not start services inside the root.
    printf "#!/bin/sh\nexit 101\n" >"$build/usr/sbin/policy-rc.d"
    chmod 0755 "$build/usr/sbin/policy-rc.d"
    chroot "$build" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q \
      --no-install-recommends rabbitmq-server >>"$build.log" 2>&1 \
      || { tail -20 "$build.log" >&2; exit 1; }
    chroot "$build" apt-get clean
    chroot "$build" dpkg-query -W -f "\${Version}\n" rabbitmq-server >"$build/.hostbus-ready"
  ' - "$build" || die "could not build the RabbitMQ 4 root (log: $build.log)"
  "${SUDO[@]}" rm -rf "$RABBITMQ4_ROOT" "$build.log"
  "${SUDO[@]}" mv "$build" "$RABBITMQ4_ROOT"
  echo "RabbitMQ $(cat "$RABBITMQ4_ROOT/.hostbus-ready") in $RABBITMQ4_ROOT ($((SECONDS - started)) s)"
}

# The tests run Node.js clients (examples/node) and a strict schema check (Ajv); their
# packages come from each folder's lockfile (npm ci), installed by the tests themselves.
ensure_node() {
  local major
  major=$(node --version 2>/dev/null | sed 's/^v\([0-9]*\).*/\1/')
  if [ "${major:-0}" -lt 18 ] || ! command -v npm >/dev/null; then
    apt_install nodejs npm
  fi
}

# -------------------------------------------------------------------------- agent
pid_of() { cat "$RUN_DIR/$1.pid" 2>/dev/null || true; }

stop_one() {  # stop_one NAME: SIGTERM what the demo started, wait for it to go
  local pid; pid=$(pid_of "$1")
  if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid"
    for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
    echo "stopped the $1 (pid $pid)"
  fi
  rm -f "$RUN_DIR/$1.pid"
}

stop_demo() { stop_one provisioner; stop_one agent; }

start_bg() {  # start_bg NAME READY-TEXT COMMAND...
  local name=$1 ready=$2; shift 2
  nohup "$@" >"$RUN_DIR/$name.log" 2>&1 &
  echo $! > "$RUN_DIR/$name.pid"
  wait_for 60 "the $name (see .run/$name.log)" grep -q "$ready" "$RUN_DIR/$name.log"
}

demo() {
  ensure_python
  ensure_rabbitmq
  local hb="$VENV/bin/hostbus"
  export HOSTBUS_BROKER_URL="$AMQP_URL" HOSTBUS_CONSOLE_ADMIN_URL="$ADMIN_URL"
  HOST_ID=$("$VENV/bin/python" -c 'from hostbus.names import default_host_id; print(default_host_id())')

  say "hostbus broker setup"
  "$hb" broker setup
  say "hostbus broker enroll $HOST_ID --agents host,virt   (and the provisioner)"
  # The demo runs everything as guest (loopback only); a real host gets a broker user of
  # its own: hostbus broker enroll HOST --agents host,virt (writes HOST.toml, mode 0600).
  "$hb" broker enroll "$HOST_ID" --agents host,virt --no-user
  "$hb" broker enroll provisioner --agents provision --no-user

  mkdir -p "$RUN_DIR"
  stop_demo >/dev/null
  say "starting hostbus-agent --config etc/demo-agent.toml (log: .run/agent.log)"
  HOSTBUS_AGENT_HOST_ID="$HOST_ID" start_bg agent "online as host" \
    "$VENV/bin/hostbus-agent" --config etc/demo-agent.toml
  say "starting hostbus provisioner (log: .run/provisioner.log)"
  HOSTBUS_PROVISIONER_STATE_DIR="$RUN_DIR/provisioner" start_bg provisioner "serving" \
    "$hb" provisioner --config etc/demo-provisioner.toml

  say "hostbus agents"
  "$hb" agents
  say "hostbus query host.disk"
  "$hb" query host.disk
  say "hostbus call host.identify -H $HOST_ID"
  "$hb" call host.identify -H "$HOST_ID"
  say "hostbus call virt.node.info -H $HOST_ID   (libvirt's test driver)"
  "$hb" call virt.node.info -H "$HOST_ID"
  say "hostbus provision submit -T web -n 2 --owner demo   (one message; no host named)"
  "$hb" provision submit -T web -n 2 --owner demo
  say "hostbus query virt.domain"
  "$hb" query virt.domain
  say "hostbus watch --duration 6   (heartbeats, metrics, VM stats as they happen)"
  "$hb" watch --duration 6
  say "the same agent (AMQP 0-9-1) from a console on AMQP 1.0: hostbus --url amqp10://... call host.identify"
  "$hb" --url "${AMQP_URL/amqp:\/\//amqp10://}" call host.identify -H "$HOST_ID"

  cat <<MSG

The agent and the provisioner keep running (logs in .run/). Try:
  source .venv/bin/activate
  hostbus --help
  hostbus call virt.domain.suspend name=<a VM above> -H $HOST_ID
  hostbus watch 'virt.*.domain.lifecycle' 'provision.#'
  hostbus provision list
  hostbus --url amqp10://guest:guest@127.0.0.1:5672/hostbus agents   # over AMQP 1.0
Stop them with:   ./run.sh stop
MSG
  if [ -n "${STARTED_BROKER:-}" ]; then
    echo "RabbitMQ was started by this script; stop it with: ${SUDO[*]:-}${SUDO:+ }rabbitmqctl stop"
  fi
}

run_tests() {
  ensure_python
  ensure_rabbitmq
  ensure_hypervisor
  ensure_rabbitmq4_root
  export HOSTBUS_TEST_RABBITMQ4_ROOT="$RABBITMQ4_ROOT"
  ensure_node
  cd "$ROOT"
  say "ruff check"
  "$VENV/bin/ruff" check .
  say "pytest (unit, contract, fuzz, integration against RabbitMQ)"
  "$VENV/bin/python" -m pytest "$@"
}

# Sourced (by a test of its functions): define them, run nothing.
[ "${BASH_SOURCE[0]}" = "$0" ] || return 0

case "${1:-}" in
  demo) shift; demo "$@" ;;
  test) shift; run_tests "$@" ;;
  stop) stop_demo ;;
  *) sed -n '2,8p' "$0" | sed 's/^# \{0,1\}//'; exit 2 ;;
esac
