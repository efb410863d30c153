#!/usr/bin/env bash
# Create/refresh .venv from requirements-dev.txt (which includes requirements.txt).
# Re-run only when the requirements files, this script or the Python version change.
set -euo pipefail
# shellcheck source=tools/lib.sh
source "$(dirname "$0")/lib.sh"
take_lock venv

PY="${PY:-python3.11}"
VENV="${HCP_ROOT}/.venv"
cd "${HCP_ROOT}"

command -v "$PY" >/dev/null || die "$PY not found"
want="$( { cat requirements.txt requirements-dev.txt "$0"; "$PY" -VV; } | sha256sum | cut -c1-16)"
if [[ -x "${VENV}/bin/python" ]] && stamp_ok venv "$want"; then
  log "venv up to date"
  exit 0
fi
if [[ ! -x "${VENV}/bin/python" ]]; then
  log "creating ${VENV}"
  "$PY" -m venv "${VENV}"
fi
log "installing requirements-dev.txt"
"${VENV}/bin/python" -m pip install -q --disable-pip-version-check --no-input -r requirements-dev.txt
"${VENV}/bin/python" -m pip check >/dev/null || die "pip check failed"
stamp_set venv "$want"
log "venv ready"
