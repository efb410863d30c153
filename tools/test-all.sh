#!/usr/bin/env bash
# Run `make STEP` for each STEP given, in order, timing each. setup and install
# failures stop the run; a failing gate is recorded and the next gate still runs.
# Ends with "N passed, N failed" and exits non-zero when anything failed.
set -euo pipefail
# shellcheck source=tools/lib.sh
source "$(dirname "$0")/lib.sh"

cd "${HCP_ROOT}"
declare -a report=()
rm -f "${HCP_CACHE}/molecule-times.txt"
passed=0 failed=0 total_start=$SECONDS
for step in "$@"; do
  printf '\n######## make %s\n' "$step"
  start=$SECONDS
  if make --no-print-directory "$step"; then
    passed=$((passed + 1))
    report+=("$(printf '  %-15s ok     %4d s' "$step" $((SECONDS - start)))")
  else
    failed=$((failed + 1))
    report+=("$(printf '  %-15s FAILED %4d s' "$step" $((SECONDS - start)))")
    case "$step" in
      setup | install | host-packages | venv) break ;;
    esac
  fi
done
printf '\n######## summary (%d s)\n' $((SECONDS - total_start))
printf '%s\n' "${report[@]}"
if [[ -s "${HCP_CACHE}/molecule-times.txt" ]]; then
  echo "  molecule scenarios:"
  sed 's/^/  /' "${HCP_CACHE}/molecule-times.txt"
fi
echo "${passed} passed, ${failed} failed"
((failed == 0))
