#!/usr/bin/env bash
# Run `make STEP` for each STEP given, in order, timing each. A step written A+B runs the
# lanes A and B side by side (their output is shown once all ended, one after the other); a lane
# written A,B,C runs its gates one after the other. ansible-lint and ansible-test sanity are
# single-threaded, and molecule leaves about a third of the two cores idle (waits on systemd and
# services), so `make test` runs the gates in one lane beside molecule's scenario lanes.
# setup/install failures stop the run; a failing gate is recorded and the next gate still runs.
# Ends with a per-gate time table (plus molecule's per-scenario times when it ran) and
# "N passed, N failed"; exits non-zero when anything failed.
set -euo pipefail
# shellcheck source=tools/lib.sh
source "$(dirname "$0")/lib.sh"

cd "${HCP_ROOT}"
declare -a report=()
logs="$(mktemp -d)"
trap 'rm -rf "$logs"' EXIT
touch "${logs}/start"
passed=0 failed=0 total_start=$SECONDS stop=0

record() { # NAME RC SECONDS
  report+=("$(time_row "$@")")
  if (($2 == 0)); then
    passed=$((passed + 1))
  else
    failed=$((failed + 1))
    case "$1" in
      setup | install | host-packages | docker | libvirt | venv | lab-base | wheelhouse | lab-image | vagrant-box) stop=1 ;;
    esac
  fi
}

for step in "$@"; do
  IFS=+ read -r -a parts <<<"$step"
  if ((${#parts[@]} == 1)); then
    printf '\n######## make %s\n' "$step"
    start=$SECONDS rc=0
    make --no-print-directory "$step" || rc=$?
    record "$step" "$rc" $((SECONDS - start))
  else
    printf '\n######## make %s (side by side)\n' "${parts[*]}"
    for lane in "${parts[@]}"; do
      IFS=, read -r -a gates <<<"$lane"
      (for g in "${gates[@]}"; do run_logged "$logs" "$g" make --no-print-directory "$g"; done) &
    done
    wait
    for lane in "${parts[@]}"; do
      IFS=, read -r -a gates <<<"$lane"
      for g in "${gates[@]}"; do
        printf '\n######## make %s\n' "$g"
        cat "${logs}/${g}.log"
        read -r rc secs <"${logs}/${g}.rc"
        record "$g" "$rc" "$secs"
      done
    done
  fi
  ((stop == 0)) || break
done
printf '\n######## summary (%d s)\n' $((SECONDS - total_start))
printf '%s\n' "${report[@]}"
if [[ "${HCP_CACHE}/molecule-times.txt" -nt "${logs}/start" ]]; then
  echo "  molecule scenarios:"
  sed 's/^/  /' "${HCP_CACHE}/molecule-times.txt"
fi
echo "${passed} passed, ${failed} failed"
((failed == 0))
