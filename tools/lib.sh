#!/usr/bin/env bash
# Shared helpers for the tools/*.sh scripts (sourced, not executed).
# shellcheck shell=bash

# Repository root (tools/..).
HCP_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
HCP_CACHE="${HCP_ROOT}/.cache"
HCP_STAMPS="${HCP_CACHE}/stamps"
export HCP_ROOT HCP_CACHE HCP_STAMPS
export DEBIAN_FRONTEND=noninteractive
# needrestart (if installed) must neither prompt nor restart services from apt runs.
export NEEDRESTART_SUSPEND=1

log() { printf '==> [%s] %s\n' "${0##*/}" "$*" >&2; }
die() { printf 'ERROR [%s] %s\n' "${0##*/}" "$*" >&2; exit 1; }

# hash_files FILE...: one sha256 over the content of the given files (order matters).
hash_files() { cat -- "$@" | sha256sum | cut -c1-16; }

# stamp_ok NAME HASH: true when the stamp NAME holds HASH.
stamp_ok() { [[ -f "${HCP_STAMPS}/$1" && "$(cat "${HCP_STAMPS}/$1")" == "$2" ]]; }
stamp_set() { mkdir -p "${HCP_STAMPS}"; printf '%s\n' "$2" >"${HCP_STAMPS}/$1"; }

# The docker client to use. /usr/local/bin/docker may be a newer client than the
# Debian engine; API version negotiation makes it work, but prefer the engine's own client.
if [[ -x /usr/bin/docker ]]; then DOCKER=/usr/bin/docker; else DOCKER=docker; fi
export DOCKER

# The Debian mirror configured on this host (first URIs line of debian.sources).
debian_mirror() {
  local f=/etc/apt/sources.list.d/debian.sources uri=""
  if [[ -r "$f" ]]; then
    uri="$(awk '/^URIs:/ {print $2; exit}' "$f")"
  fi
  if [[ -z "$uri" && -r /etc/apt/sources.list ]]; then
    uri="$(awk '$1 == "deb" && $0 !~ /security/ {print $2; exit}' /etc/apt/sources.list)"
  fi
  printf '%s\n' "${uri:-http://deb.debian.org/debian}"
}

# take_lock NAME: serialise concurrent runs of a step (several `make` in one checkout);
# held until the script exits. Waits at most LOCK_TIMEOUT seconds (default 900).
take_lock() {
  mkdir -p "${HCP_CACHE}/locks"
  exec 9>"${HCP_CACHE}/locks/$1.lock"
  if ! flock -n 9; then
    log "waiting for another run of $1"
    flock -w "${LOCK_TIMEOUT:-900}" 9 || die "lock $1 not obtained"
  fi
}

# run_logged DIR NAME CMD...: run CMD (no stdin) with its output in DIR/NAME.log, then leave
# "rc seconds" in DIR/NAME.rc. For steps run side by side (test-all.sh, molecule-all.sh).
run_logged() {
  local dir="$1" name="$2" start=$SECONDS rc=0
  shift 2
  "$@" >"${dir}/${name}.log" 2>&1 </dev/null || rc=$?
  echo "$rc $((SECONDS - start))" >"${dir}/${name}.rc"
}

# time_row NAME RC SECONDS: one row of a time table (test-all.sh, molecule-all.sh).
time_row() {
  if (($2 == 0)); then
    printf '  %-15s ok     %4d s' "$1" "$3"
  else
    printf '  %-15s FAILED %4d s' "$1" "$3"
  fi
}
