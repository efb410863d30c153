#!/usr/bin/env bash
# Boot a throw-away systemd container from IMAGE (default hcp-lab/debian:bookworm)
# with the lab's container options and wait until `systemctl is-system-running`
# says running or degraded. Prints failed units. Exit 0 when systemd is up.
set -euo pipefail
# shellcheck source=tools/lib.sh
source "$(dirname "$0")/lib.sh"

IMAGE="${1:-${LAB_IMAGE:-hcp-lab/debian:bookworm}}"
TIMEOUT="${BOOT_TIMEOUT:-60}"
NAME="hcp-boot-check-$$"

cleanup() { "$DOCKER" rm -f "$NAME" >/dev/null 2>&1 || true; }
trap cleanup EXIT

"$DOCKER" run -d --name "$NAME" \
  --cap-add SYS_ADMIN --cgroupns=host -v /sys/fs/cgroup:/sys/fs/cgroup:rw \
  --tmpfs /run --tmpfs /run/lock --security-opt seccomp=unconfined \
  "$IMAGE" /sbin/init >/dev/null

state=unknown
start=$SECONDS
while ((SECONDS - start < TIMEOUT)); do
  state="$("$DOCKER" exec "$NAME" systemctl is-system-running 2>/dev/null || true)"
  case "$state" in
    running | degraded) break ;;
  esac
  sleep 0.5
done
failed="$("$DOCKER" exec "$NAME" systemctl list-units --failed --no-legend --plain 2>/dev/null || true)"
log "systemd state after $((SECONDS - start)) s: ${state}"
[[ -z "$failed" ]] || printf 'failed units:\n%s\n' "$failed" >&2
[[ "$state" == running || "$state" == degraded ]]
