#!/usr/bin/env bash
# Stage the working tree (tracked + untracked-not-ignored files) into
# collections/ansible_collections/hcp/core, refreshed each time (files removed from the
# work tree disappear from the stage). The stage gets its
# own `git init` so ansible-test lists its files (the outer repo ignores collections/).
set -euo pipefail
# shellcheck source=tools/lib.sh
source "$(dirname "$0")/lib.sh"
take_lock stage

COLL="${HCP_ROOT}/collections/ansible_collections/hcp/core"
cd "${HCP_ROOT}"
git rev-parse --is-inside-work-tree >/dev/null 2>&1 || die "${HCP_ROOT} is not a git work tree"

# Build the new tree aside, then sync it into place: the stage directory itself is never
# removed, so a test running in it (cwd) during a concurrent `make install` survives.
# tests/output (ansible-test's results/caches) and the stage's .git are kept.
mkdir -p "${COLL}"
tmp="$(mktemp -d "${HCP_ROOT}/collections/.stage.XXXXXX")"
trap 'rm -rf "$tmp"' EXIT
# -c lists tracked files even when deleted from the work tree: keep only existing ones.
git ls-files -z -co --exclude-standard \
  | while IFS= read -r -d '' f; do
    if [[ -e "$f" || -L "$f" ]]; then printf '%s\0' "$f"; fi
  done \
  | tar --null -T - -cf - | tar -xf - -C "$tmp"
rsync -a --delete --exclude=/.git --exclude=/tests/output "$tmp/" "${COLL}/"
[[ -d "${COLL}/.git" ]] || git -C "${COLL}" init -q
log "staged $(find "$tmp" -type f | wc -l) files in ${COLL#"${HCP_ROOT}"/}"
