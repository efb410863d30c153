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
# python-gssapi has no Linux wheel: pip builds it from its sdist (Cython, then gcc on large
# generated C files), the longest step of a fresh set-up. Built first and on its own with -O0:
# gcc's CPU time falls from ~117 s to ~45 s (measured here), and the module is a thin wrapper
# whose calls spend their time in the MIT krb5 library, not in the wrapper's own code. pip
# caches the wheel, so the wheelhouse (tools/wheelhouse.sh) reuses it. Other sdists (tpm2-pytss)
# keep the default flags.
gss="$(grep -E '^gssapi==' requirements.txt || true)"
if [[ -n "$gss" ]] && ! "${VENV}/bin/python" -c 'import gssapi' 2>/dev/null; then
  log "building ${gss} (-O0)"
  CFLAGS="-O0" "${VENV}/bin/python" -m pip install -q --disable-pip-version-check --no-input "$gss"
fi
log "installing requirements-dev.txt"
"${VENV}/bin/python" -m pip install -q --disable-pip-version-check --no-input -r requirements-dev.txt
"${VENV}/bin/python" -m pip check >/dev/null || die "pip check failed"
stamp_set venv "$want"
log "venv ready"
