#!/usr/bin/env bash
# Install the built collection tarball offline into a temporary directory and render
# the docs of its modules and roles from there (ansible-doc), so a broken tarball
# or an undocumented plugin fails here. Also refuses tarballs carrying dev-only trees.
set -euo pipefail
# shellcheck source=tools/lib.sh
source "$(dirname "$0")/lib.sh"

BIN="${HCP_ROOT}/.venv/bin"
DIST="${HCP_CACHE}/dist"
shopt -s nullglob
tarballs=("${DIST}"/hcp-core-*.tar.gz)
((${#tarballs[@]} == 1)) || die "expected one tarball in ${DIST}, found ${#tarballs[@]} (run make build)"
tarball="${tarballs[0]}"

bad="$(tar -tzf "$tarball" | grep -E '^(\./)?(\.venv|\.cache|\.git|collections|tests/output|\.ansible|tools|\.ci)/' | head -n 5 || true)"
[[ -z "$bad" ]] || die "tarball contains dev-only files: ${bad}"

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
# Only the temp dir on the collection path (not the repo's ./collections stage, which would
# make ansible-galaxy report "already installed"); run from there, away from ansible.cfg.
cd "$tmp"
export ANSIBLE_COLLECTIONS_PATH="$tmp"
"${BIN}/ansible-galaxy" collection install --offline --no-deps --force -p "$tmp" "$tarball" >/dev/null
inst="${tmp}/ansible_collections/hcp/core"
[[ -f "${inst}/MANIFEST.json" ]] || die "install into ${tmp} failed"

modules=()
for f in "${inst}"/plugins/modules/*.py; do
  name="$(basename "$f" .py)"
  [[ "$name" == __init__ ]] || modules+=("hcp.core.${name}")
done
roles=()
for d in "${inst}"/roles/*/; do
  roles+=("hcp.core.$(basename "$d")")
done

n=0
if ((${#modules[@]})); then
  "${BIN}/ansible-doc" -t module "${modules[@]}" >"${tmp}/modules.txt"
  n=$((n + ${#modules[@]}))
fi
for r in "${roles[@]}"; do
  "${BIN}/ansible-doc" -t role "$r" >"${tmp}/role.txt"
  n=$((n + 1))
done
log "$(basename "$tarball"): $(tar -tzf "$tarball" | wc -l) entries; docs rendered for ${n} plugins/roles: ${modules[*]} ${roles[*]}"
