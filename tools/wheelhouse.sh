#!/usr/bin/env bash
# Build the runtime wheelhouse .cache/wheelhouse from requirements.txt on the
# controller (tpm2-pytss compiles against libtss2-dev; Debian 12's python3 is 3.11,
# the same ABI as the controller's). Targets install from it with
# `pip install --no-index --find-links`; requirements.txt is copied in so the
# directory is self-contained (also the air-gapped install path).
# Rebuilt only when requirements.txt or this script change. Then checked in a lab
# container (when the image exists): the wheels install offline and tpm2_pytss imports.
set -euo pipefail
# shellcheck source=tools/lib.sh
source "$(dirname "$0")/lib.sh"
take_lock wheelhouse

WH="${HCP_WHEELHOUSE:-${HCP_CACHE}/wheelhouse}"
PIP=("${HCP_ROOT}/.venv/bin/python" -m pip)
IMAGE="${LAB_IMAGE:-hcp-lab/debian:bookworm}"
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
  rm -f "${HCP_STAMPS}/wheelhouse-check"
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

# Offline install check in a lab container (needs the image and an engine).
if ! "$DOCKER" image inspect "$IMAGE" >/dev/null 2>&1; then
  log "image ${IMAGE} missing: install check skipped"
  exit 0
fi
check="${want}-$("$DOCKER" image inspect -f '{{ .Id }}' "$IMAGE" | cut -c8-23)"
if stamp_ok wheelhouse-check "$check"; then
  log "wheelhouse install check up to date"
  exit 0
fi
log "checking offline install in ${IMAGE}"
"$DOCKER" run --rm --network none -v "${WH}:/wheelhouse:ro" "$IMAGE" /bin/sh -euc '
  python3 -m venv --system-site-packages /tmp/venv
  /tmp/venv/bin/pip install -q --disable-pip-version-check --no-index --find-links /wheelhouse -r /wheelhouse/requirements.txt
  /tmp/venv/bin/python -c "import tpm2_pytss.ESAPI, cryptography; print(\"tpm2_pytss OK, cryptography\", cryptography.__version__)"
'
stamp_set wheelhouse-check "$check"
