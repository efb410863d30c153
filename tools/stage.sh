#!/usr/bin/env bash
# Stage the working tree (tracked + untracked-not-ignored files) into
# collections/ansible_collections/hcp/core, refreshed each time. The stage gets its
# own `git init` so ansible-test lists its files (the outer repo ignores collections/).
set -euo pipefail
# shellcheck source=tools/lib.sh
source "$(dirname "$0")/lib.sh"

COLL="${HCP_ROOT}/collections/ansible_collections/hcp/core"
cd "${HCP_ROOT}"
git rev-parse --is-inside-work-tree >/dev/null 2>&1 || die "${HCP_ROOT} is not a git work tree"

rm -rf "${COLL}"
mkdir -p "${COLL}"
# -c lists tracked files even when deleted from the work tree: keep only existing ones.
git ls-files -z -co --exclude-standard \
  | while IFS= read -r -d '' f; do
    if [[ -e "$f" || -L "$f" ]]; then printf '%s\0' "$f"; fi
  done \
  | tar --null -T - -cf - | tar -xf - -C "${COLL}"
git -C "${COLL}" init -q
log "staged $(find "${COLL}" -path "${COLL}/.git" -prune -o -type f -print | wc -l) files in ${COLL#"${HCP_ROOT}"/}"
