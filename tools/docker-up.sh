#!/usr/bin/env bash
# Make sure a Docker engine answers on /var/run/docker.sock. When none runs, start
# Debian's dockerd in the background (log: .cache/dockerd.log) and wait for it (bounded).
set -euo pipefail
# shellcheck source=tools/lib.sh
source "$(dirname "$0")/lib.sh"
take_lock docker

SOCK=/var/run/docker.sock
TIMEOUT="${DOCKERD_TIMEOUT:-60}"

if "$DOCKER" info >/dev/null 2>&1; then
  log "docker engine running"
  exit 0
fi
command -v dockerd >/dev/null || die "dockerd not installed (run tools/host-packages.sh)"
[[ $EUID -eq 0 ]] || die "docker engine not running and not root: start it yourself"

mkdir -p "${HCP_CACHE}"
log "starting dockerd (log: ${HCP_CACHE}/dockerd.log)"
# setsid + nohup: the engine outlives make; stdin closed so nothing waits on a terminal;
# fd 9 (our lock) closed, or the engine would hold the lock for good.
setsid nohup dockerd >>"${HCP_CACHE}/dockerd.log" 2>&1 </dev/null 9>&- &
echo $! >"${HCP_CACHE}/dockerd.pid"

for ((i = 0; i < TIMEOUT * 2; i++)); do
  if [[ -S "$SOCK" ]] && "$DOCKER" info >/dev/null 2>&1; then
    log "docker engine up after $((i / 2)) s"
    exit 0
  fi
  if ! kill -0 "$(cat "${HCP_CACHE}/dockerd.pid")" 2>/dev/null; then
    tail -n 20 "${HCP_CACHE}/dockerd.log" >&2 || true
    die "dockerd exited"
  fi
  sleep 0.5
done
tail -n 20 "${HCP_CACHE}/dockerd.log" >&2 || true
die "docker engine not ready after ${TIMEOUT} s"
