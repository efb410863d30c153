#!/usr/bin/env bash
# Make sure libvirt answers on qemu:///system (for the vagrant scenario, molecule/vagrant).
# These machines run no systemd as PID 1 (nothing starts the daemons Debian's packages enable),
# so when no libvirtd answers, start virtlogd and libvirtd in the background (logs:
# .cache/virtlogd.log, .cache/libvirtd.log) and wait for them (bounded).
# Configuration, idempotent, before the first start:
#  - /etc/libvirt/qemu.conf: qemu runs as user/group root. With Debian's default
#    (libvirt-qemu) each domain definition took ~48 s here (libvirt relabels/chowns its files
#    one by one); as root it is immediate. Only on a machine that runs the lab, never a server.
#  - the `default` NAT network is not autostarted: the scenario uses its own host-only network
#    (no forwarding, no NAT rules), so nothing of libvirt routes to the outside.
# libvirtd is restarted when this script changed qemu.conf (it reads it at start only).
set -euo pipefail
# shellcheck source=tools/lib.sh
source "$(dirname "$0")/lib.sh"
take_lock libvirt

URI=qemu:///system
CONF=/etc/libvirt/qemu.conf
TIMEOUT="${LIBVIRTD_TIMEOUT:-60}"

if ! command -v libvirtd >/dev/null || ! command -v virsh >/dev/null; then
  die "libvirt not installed (run tools/host-packages.sh)"
fi

changed=0
set_conf() { # KEY VALUE: `KEY = "VALUE"` in qemu.conf (replaces a commented or set line)
  if ! grep -qxF "$1 = \"$2\"" "$CONF"; then
    [[ $EUID -eq 0 ]] || die "${CONF} needs $1 = \"$2\" and not root"
    if grep -qE "^#?$1 = " "$CONF"; then
      sed -i -E "0,/^#?$1 = .*/s//$1 = \"$2\"/" "$CONF"
    else
      printf '%s = "%s"\n' "$1" "$2" >>"$CONF"
    fi
    changed=1
  fi
}
set_conf user root
set_conf group root
rm -f /etc/libvirt/qemu/networks/autostart/default.xml

if ((changed == 0)) && virsh -c "$URI" version >/dev/null 2>&1; then
  log "libvirtd running"
  exit 0
fi
[[ $EUID -eq 0 ]] || die "libvirtd not running and not root: start it yourself"
mkdir -p "${HCP_CACHE}"

# start NAME: NAME (virtlogd/libvirtd) in the background unless it runs. setsid + nohup: the
# daemon outlives make; stdin closed; fd 9 (our lock) closed, or the daemon would hold it.
start() {
  local name="$1" pidfile="${HCP_CACHE}/$1.pid"
  if [[ -f "$pidfile" ]] && kill -0 "$(cat "$pidfile")" 2>/dev/null; then
    return 0
  fi
  if pgrep -x "$name" >/dev/null; then
    return 0 # started by someone else (e.g. systemd on a workstation)
  fi
  log "starting ${name} (log: ${HCP_CACHE}/${name}.log)"
  setsid nohup "$name" >>"${HCP_CACHE}/${name}.log" 2>&1 </dev/null 9>&- &
  echo $! >"$pidfile"
}
if ((changed == 1)) && [[ -f "${HCP_CACHE}/libvirtd.pid" ]] && kill -0 "$(cat "${HCP_CACHE}/libvirtd.pid")" 2>/dev/null; then
  log "qemu.conf changed: restarting our libvirtd"
  kill "$(cat "${HCP_CACHE}/libvirtd.pid")"
  for ((i = 0; i < 20; i++)); do kill -0 "$(cat "${HCP_CACHE}/libvirtd.pid")" 2>/dev/null || break; sleep 0.5; done
fi
start virtlogd
start libvirtd

for ((i = 0; i < TIMEOUT * 2; i++)); do
  if virsh -c "$URI" version >/dev/null 2>&1; then
    log "libvirtd up after $((i / 2)) s"
    exit 0
  fi
  sleep 0.5
done
tail -n 20 "${HCP_CACHE}/libvirtd.log" >&2 || true
die "libvirtd not ready after ${TIMEOUT} s"
