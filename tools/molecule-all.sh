#!/usr/bin/env bash
# Run `molecule test -s NAME` for every scenario directory molecule/NAME/molecule.yml, from the
# repo root, against the staged collection (./collections). Continues after a failing scenario
# and exits non-zero if any failed. Scenarios can be chosen with MOLECULE_SCENARIOS="a b".
#
# MOLECULE_JOBS scenarios (default 3) run side by side: a scenario leaves about a third of the
# two cores idle (service restarts, timers, waits, apt downloads), and scenarios share nothing (own
# containers, networks and ephemeral directories). Measured, warm `make test` with the three
# scenarios of today: 2 at a time 973 s, 3 at a time 882 s (the idle share fell from ~25 to 10 %);
# 4 at a time was slower when there were five scenarios (load ~10). The longest
# scenarios start first (each one's last time, .cache/molecule-history.txt, else the committed
# molecule/scenario-times.txt). Each scenario's output goes to .cache/molecule-logs/NAME.log and is
# printed when it ends; the per-scenario times end the output and .cache/molecule-times.txt.
set -euo pipefail
# shellcheck source=tools/lib.sh
source "$(dirname "$0")/lib.sh"

cd "${HCP_ROOT}"
export PATH="${HCP_ROOT}/.venv/bin:${PATH}"
export ANSIBLE_COLLECTIONS_PATH="${HCP_ROOT}/collections"
export HCP_WHEELHOUSE="${HCP_WHEELHOUSE:-${HCP_CACHE}/wheelhouse}"
export MOLECULE_GLOB="molecule/*/molecule.yml"
export ANSIBLE_FORCE_COLOR="${ANSIBLE_FORCE_COLOR:-0}"
JOBS="${MOLECULE_JOBS:-3}"
TIMES="${HCP_CACHE}/molecule-times.txt"     # this run's rows (test-all.sh prints them)
HISTORY="${HCP_CACHE}/molecule-history.txt" # each scenario's last time, whatever run measured it
ORDER="$HISTORY" # for the order; before any run here, the times measured on the project's machine
[[ -s "$ORDER" ]] || ORDER=molecule/scenario-times.txt
LOGS="${HCP_CACHE}/molecule-logs"

if [[ -n "${MOLECULE_SCENARIOS:-}" ]]; then
  read -r -a scenarios <<<"${MOLECULE_SCENARIOS}"
else
  scenarios=()
  for f in molecule/*/molecule.yml; do
    [[ -e "$f" ]] && scenarios+=("$(basename "$(dirname "$f")")")
  done
  # Longest first, by the last recorded times (unknown scenarios count as long).
  if [[ -s "$ORDER" ]]; then
    mapfile -t scenarios < <(for s in "${scenarios[@]}"; do
      t="$(awk -v s="$s" '$1 == s {print $(NF - 1)}' "$ORDER")"
      echo "${t:-99999} $s"
    done | sort -rn | cut -d' ' -f2)
  fi
fi
# Scenarios that need more than docker run where their tools are installed (make setup installs
# them; tools/host-packages.sh); elsewhere they are skipped with a note, and under CI a skip fails.
declare -A needs=([vagrant]="vagrant virsh qemu-system-x86_64")
skipped=()
for i in "${!scenarios[@]}"; do
  s="${scenarios[i]}"
  for cmd in ${needs[$s]:-}; do
    if ! command -v "$cmd" >/dev/null; then
      log "scenario ${s} skipped: ${cmd} not installed (make setup installs it)"
      skipped+=("$s")
      unset "scenarios[i]"
      break
    fi
  done
done
scenarios=("${scenarios[@]}")
if ((${#skipped[@]} > 0)) && [[ -n "${CI:-}" ]]; then
  die "scenarios skipped under CI: ${skipped[*]}"
fi
if ((${#scenarios[@]} == 0)); then
  log "no molecule scenarios (molecule/*/molecule.yml)"
  exit 0
fi

mkdir -p "$LOGS"
rm -f "${LOGS}"/*.rc
log "${#scenarios[@]} scenarios, ${JOBS} at a time: ${scenarios[*]}"
declare -A pid_of=()
next=0 running=0
passed=() failed=() report=()
# fresh_start NAME: what the first `destroy` of a test sequence did, in a second instead of
# ~15 s (a destroy playbook run per scenario): remove the scenario's containers (by the platform
# names of its molecule.yml) and give it an empty ephemeral directory of its own, so `create`
# never skips on a stale state file. The scenarios' test sequences therefore start at `create`.
# Only docker scenarios have containers: a scenario with its own driver (molecule/vagrant, whose
# create.yml removes VMs left by an interrupted run) keeps its platform names to itself.
fresh_start() {
  local s="$1" names
  names="$("${HCP_ROOT}/.venv/bin/python" -c 'import sys, yaml
doc = yaml.safe_load(open(sys.argv[1]))
if (doc.get("driver") or {}).get("name", "docker") == "docker":
    print(" ".join(p["name"] for p in doc.get("platforms") or []))' "molecule/${s}/molecule.yml")"
  if [[ -n "$names" ]]; then
    # shellcheck disable=SC2086 # the names are words
    docker rm -f $names >/dev/null 2>&1 || true
  fi
  rm -rf "${HCP_CACHE}/molecule-ephemeral/${s}"
  mkdir -p "${HCP_CACHE}/molecule-ephemeral/${s}"
}
finish() { # NAME: report a scenario that ended
  local s="$1" rc secs
  read -r rc secs <"${LOGS}/${s}.rc"
  printf '\n######## molecule test -s %s (%d s)\n' "$s" "$secs"
  cat "${LOGS}/${s}.log"
  report+=("$(time_row "$s" "$rc" "$secs")")
  if ((rc == 0)); then
    passed+=("$s")
    log "scenario ${s} passed in ${secs} s"
  else
    failed+=("$s")
    log "scenario ${s} FAILED after ${secs} s (log: ${LOGS}/${s}.log)"
  fi
}
while ((next < ${#scenarios[@]} || running > 0)); do
  while ((running < JOBS && next < ${#scenarios[@]})); do
    s="${scenarios[next]}"
    log "molecule test -s ${s}"
    fresh_start "$s"
    MOLECULE_EPHEMERAL_DIRECTORY="${HCP_CACHE}/molecule-ephemeral/${s}" run_logged "$LOGS" "$s" molecule test -s "$s" &
    pid_of[$s]=$!
    next=$((next + 1)) running=$((running + 1))
  done
  wait -n || true
  for s in "${!pid_of[@]}"; do
    # A scenario killed before it could write its result counts as failed (without this the loop
    # would spin: wait -n returns at once when no child is left).
    if [[ ! -f "${LOGS}/${s}.rc" ]] && ! kill -0 "${pid_of[$s]}" 2>/dev/null && [[ ! -f "${LOGS}/${s}.rc" ]]; then
      echo "1 0" >"${LOGS}/${s}.rc"
    fi
    if [[ -f "${LOGS}/${s}.rc" ]]; then
      wait "${pid_of[$s]}" 2>/dev/null || true
      unset "pid_of[$s]"
      running=$((running - 1))
      finish "$s"
    fi
  done
done
mkdir -p "${HCP_CACHE}"
printf '%s\n' "${report[@]}" >"$TIMES"
cat "$TIMES" "$ORDER" | awk '!seen[$1]++' >"${HISTORY}.new"
mv "${HISTORY}.new" "$HISTORY"
printf '\nmolecule scenarios (%d at a time):\n' "$JOBS"
printf '%s\n' "${report[@]}"
echo "molecule: ${#passed[@]} passed, ${#failed[@]} failed${failed[*]:+ (${failed[*]})}"
((${#failed[@]} == 0))
