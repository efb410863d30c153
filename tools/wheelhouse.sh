#!/usr/bin/env bash
# Build the runtime wheelhouse .cache/wheelhouse from requirements.txt on the
# controller (tpm2-pytss compiles against libtss2-dev; Debian 12's python3 is 3.11,
# the same ABI as the controller's). Targets install from it with
# `pip install --no-index --find-links`; requirements.txt is copied in so the
# directory is self-contained (also the air-gapped install path).
# Rebuilt only when requirements.txt or this script change. tools/lab-image.sh installs it
# offline into the lab image's venv and imports tpm2_pytss there (the install check).
set -euo pipefail
# shellcheck source=tools/lib.sh
source "$(dirname "$0")/lib.sh"
take_lock wheelhouse

WH="${HCP_WHEELHOUSE:-${HCP_CACHE}/wheelhouse}"
PIP=("${HCP_ROOT}/.venv/bin/python" -m pip)
cd "${HCP_ROOT}"

want="$(hash_files requirements.txt "$0")"
if stamp_ok wheelhouse "$want" && [[ -f "${WH}/requirements.txt" ]]; then
  log "wheelhouse up to date"
else
  log "building ${WH}"
  rm -rf "${WH}"
  mkdir -p "${WH}"
  "${PIP[@]}" wheel -q --disable-pip-version-check --no-input -w "${WH}" -r requirements.txt
  cp requirements.txt "${WH}/requirements.txt"
  stamp_set wheelhouse "$want"
  # Runtime libraries the compiled tpm2-pytss extension links against -> Debian packages.
  tmpso="$(mktemp -d)"
  "${HCP_ROOT}/.venv/bin/python" - "${WH}" "$tmpso" <<'PY'
import pathlib, sys, zipfile
for whl in pathlib.Path(sys.argv[1]).glob("tpm2_pytss-*.whl"):
    with zipfile.ZipFile(whl) as z:
        for n in z.namelist():
            if n.endswith(".so"):
                z.extract(n, sys.argv[2])
PY
  so="$(find "$tmpso" -name '_libtpm2_pytss*.so' -print -quit)"
  if [[ -n "$so" ]]; then
    mapfile -t libs < <(readelf -d "$so" | sed -n 's/.*(NEEDED).*\[\(.*\)\]/\1/p')
    pkgs="$(for l in "${libs[@]}"; do dpkg -S "*/$l" 2>/dev/null | head -n1 | cut -d: -f1; done | sort -u | tr '\n' ' ')"
    log "tpm2-pytss needs: ${pkgs}(+ the TCTI plugins libtss2-tcti-*, loaded at run time)"
  fi
  rm -rf "$tmpso"
fi
