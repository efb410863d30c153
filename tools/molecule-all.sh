#!/usr/bin/env bash
# Run `molecule test -s NAME` for every scenario directory molecule/NAME/molecule.yml,
# from the repo root, against the staged collection (./collections). Continues after a
# failing scenario and exits non-zero if any failed. Scenarios can be chosen with
# MOLECULE_SCENARIOS="a b".
set -euo pipefail
# shellcheck source=tools/lib.sh
source "$(dirname "$0")/lib.sh"

cd "${HCP_ROOT}"
export PATH="${HCP_ROOT}/.venv/bin:${PATH}"
export ANSIBLE_COLLECTIONS_PATH="${HCP_ROOT}/collections"
export HCP_WHEELHOUSE="${HCP_WHEELHOUSE:-${HCP_CACHE}/wheelhouse}"
export MOLECULE_GLOB="molecule/*/molecule.yml"
export ANSIBLE_FORCE_COLOR="${ANSIBLE_FORCE_COLOR:-0}"

if [[ -n "${MOLECULE_SCENARIOS:-}" ]]; then
  read -r -a scenarios <<<"${MOLECULE_SCENARIOS}"
else
  scenarios=()
  for f in molecule/*/molecule.yml; do
    [[ -e "$f" ]] && scenarios+=("$(basename "$(dirname "$f")")")
  done
fi
if ((${#scenarios[@]} == 0)); then
  log "no molecule scenarios (molecule/*/molecule.yml)"
  exit 0
fi

passed=() failed=() report=()
for s in "${scenarios[@]}"; do
  log "molecule test -s ${s}"
  start=$SECONDS
  if molecule test -s "$s" </dev/null; then
    passed+=("$s")
    report+=("$(printf '  %-15s ok     %4d s' "$s" $((SECONDS - start)))")
    log "scenario ${s} passed in $((SECONDS - start)) s"
  else
    failed+=("$s")
    report+=("$(printf '  %-15s FAILED %4d s' "$s" $((SECONDS - start)))")
    log "scenario ${s} FAILED after $((SECONDS - start)) s"
  fi
done
mkdir -p "${HCP_CACHE}"
printf '%s\n' "${report[@]}" >"${HCP_CACHE}/molecule-times.txt"
printf 'molecule scenarios:\n'
printf '%s\n' "${report[@]}"
echo "molecule: ${#passed[@]} passed, ${#failed[@]} failed${failed[*]:+ (${failed[*]})}"
((${#failed[@]} == 0))
