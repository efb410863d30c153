#!/usr/bin/env bash
# Build the two lab images locally (no registry):
#  - BASE  hcp-lab/debian-base:bookworm: debootstrap minbase bookworm from the host's Debian
#    mirror (systemd, python3, python3-apt and little else), `docker import` with CMD /sbin/init.
#    The bare-Debian path: roles install every package and the runtime venv themselves (one
#    molecule scenario uses it, so air-gapped installs stay proven).
#  - IMAGE hcp-lab/debian:bookworm, built FROM BASE: every Debian package the roles install
#    (read from the roles' defaults, *_packages) plus LAB_EXTRA_PACKAGES, and the runtime venv
#    /opt/hcp/venv with the pinned wheels of the wheelhouse (offline install, which doubles as
#    the wheelhouse's install check). The runtime role then only adds the library wheel.
#    Also a compile cache for Ansible's module payloads (tools/lab-image/hcp_lab_pycache.py: why
#    and what in its docstring), the one lab-only speed-up; never in BASE nor the collection.
# `tools/lab-image.sh base` builds BASE alone (make lab-base). Each image carries the hash of its inputs as a label and is rebuilt only when they change
# (or FORCE=1). Apt lists are left EMPTY in both (directory mtime = build time): roles must
# refresh them before installing anything. Docker 20.10's import knows no STOPSIGNAL: systemd
# wants SIGRTMIN+3, so containers set it themselves (or are removed with force). After a build
# a container is booted to check that systemd reaches running/degraded.
set -euo pipefail
# shellcheck source=tools/lib.sh
source "$(dirname "$0")/lib.sh"
take_lock lab-image

IMAGE="${LAB_IMAGE:-hcp-lab/debian:bookworm}"
BASE="${LAB_BASE_IMAGE:-hcp-lab/debian-base:bookworm}"
WH="${HCP_WHEELHOUSE:-${HCP_CACHE}/wheelhouse}"
LAB_FILES="$(dirname "$0")/lab-image"
SUITE=bookworm
LABEL=org.hcp.lab.build-hash
# The bare base: what Ansible needs to manage a systemd host, nothing of ours.
PACKAGES=(systemd systemd-sysv dbus python3 python3-apt ca-certificates iproute2 procps sudo)
# Packages no role default names but scenarios use (SoftHSM2: the HSM share path).
LAB_EXTRA_PACKAGES=(softhsm2 libtss2-tcti-tabrmd0)
# systemd units that cannot work in an unprivileged container.
MASK_UNITS=(
  systemd-remount-fs.service systemd-udevd.service systemd-udev-trigger.service
  systemd-modules-load.service sys-kernel-config.mount sys-kernel-debug.mount
  sys-kernel-tracing.mount getty.target console-getty.service
)

# promote CANDIDATE IMAGE: boot-check CANDIDATE, then tag it IMAGE. A failed check leaves the
# previous IMAGE in place.
promote() {
  log "checking that systemd boots in $1"
  if ! "$(dirname "$0")/lab-boot-check.sh" "$1"; then
    "$DOCKER" image rm -f "$1" >/dev/null 2>&1 || true
    die "systemd did not come up in the new image; $2 left as it was"
  fi
  "$DOCKER" tag "$1" "$2"
  "$DOCKER" image rm "$1" >/dev/null
  log "image $2 built ($("$DOCKER" image inspect -f '{{ .Size }}' "$2") bytes)"
}

# ---- BASE ------------------------------------------------------------------------------
build_base() {
  local want="$1"
command -v debootstrap >/dev/null || die "debootstrap missing (run tools/host-packages.sh)"
ROOTFS="${HCP_CACHE}/lab-rootfs"
cleanup() { rm -rf "${ROOTFS}"; }
trap cleanup EXIT
cleanup
mkdir -p "${ROOTFS}"

MIRROR="$(debian_mirror)"
log "debootstrap ${SUITE} from ${MIRROR}"
pkgs="$(IFS=,; echo "${PACKAGES[*]}")"
debootstrap --variant=minbase --include="${pkgs}" "${SUITE}" "${ROOTFS}" "${MIRROR}" \
  >"${HCP_CACHE}/debootstrap.log" 2>&1 || {
  tail -n 30 "${HCP_CACHE}/debootstrap.log" >&2
  die "debootstrap failed (log: ${HCP_CACHE}/debootstrap.log)"
}

log "configuring rootfs"
# apt sources: the same mirrors as the host (updates + security included).
rm -f "${ROOTFS}/etc/apt/sources.list"
if [[ -r /etc/apt/sources.list.d/debian.sources ]]; then
  grep -v '^#' /etc/apt/sources.list.d/debian.sources >"${ROOTFS}/etc/apt/sources.list.d/debian.sources"
else
  cat >"${ROOTFS}/etc/apt/sources.list.d/debian.sources" <<SRC
Types: deb
URIs: ${MIRROR}
Suites: ${SUITE} ${SUITE}-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
fi
# Bring the packages to the level of bookworm-updates/-security (no daemons started).
printf '#!/bin/sh\nexit 101\n' >"${ROOTFS}/usr/sbin/policy-rc.d"
chmod 0755 "${ROOTFS}/usr/sbin/policy-rc.d"
{
  chroot "${ROOTFS}" apt-get update -qq
  chroot "${ROOTFS}" apt-get dist-upgrade -y -qq -o Dpkg::Options::=--force-confold
} >>"${HCP_CACHE}/debootstrap.log" 2>&1 || die "apt-get dist-upgrade in the rootfs failed (log: ${HCP_CACHE}/debootstrap.log)"
chroot "${ROOTFS}" apt-get clean
rm -f "${ROOTFS}/usr/sbin/policy-rc.d"
rm -rf "${ROOTFS}"/var/lib/apt/lists/* "${ROOTFS}"/var/cache/apt/*.bin "${ROOTFS}"/tmp/* "${ROOTFS}"/var/log/*.log

for unit in "${MASK_UNITS[@]}"; do
  ln -sf /dev/null "${ROOTFS}/etc/systemd/system/${unit}"
done
# Each container gets its own machine id at boot.
: >"${ROOTFS}/etc/machine-id"
rm -f "${ROOTFS}/var/lib/dbus/machine-id"
echo lab >"${ROOTFS}/etc/hostname"

# Import under a candidate tag; IMAGE is re-pointed only once the boot check passed, so a
# failed build leaves the previous image in place.
CANDIDATE="${BASE%%:*}:candidate-$$"
log "importing ${BASE}"
tar -C "${ROOTFS}" --numeric-owner -c . | "$DOCKER" import \
  --change 'CMD ["/sbin/init"]' \
  --change 'ENV container=docker' \
  --change "LABEL ${LABEL}=${want}" \
  - "${CANDIDATE}" >/dev/null

promote "${CANDIDATE}" "${BASE}"
}

# ---- IMAGE (FROM BASE) -------------------------------------------------------------------
# Every list-of-strings *_packages variable of the roles' defaults (the public API that the
# roles install from), so the image follows the roles without a second list to keep in sync.
role_packages() {
  "${HCP_ROOT}/.venv/bin/python" - "${HCP_ROOT}"/roles/*/defaults/main.yml <<'PY'
import sys
import yaml
out = set()
for path in sys.argv[1:]:
    with open(path, encoding="utf-8") as f:
        for key, value in (yaml.safe_load(f) or {}).items():
            if key.endswith("_packages") and isinstance(value, list) and all(isinstance(v, str) for v in value):
                out.update(value)
print(" ".join(sorted(out)))
PY
}

build_full() {
  local pkgs="$1" want="$2" ctx
  ctx="$(mktemp -d "${HCP_CACHE}/lab-image-ctx.XXXXXX")"
  mkdir -p "${ctx}/wheelhouse"
  # The pinned third-party wheels only (the library wheel is the runtime role's business).
  find "${WH}" -maxdepth 1 -name '*.whl' ! -name 'hcp_core_lib-*' -exec cp {} "${ctx}/wheelhouse/" \;
  cp "${WH}/requirements.txt" "${ctx}/wheelhouse/"
  cp "${LAB_FILES}/hcp_lab_pycache.py" "${ctx}/"
  cat >"${ctx}/Dockerfile" <<DOCKERFILE
FROM ${BASE}
COPY wheelhouse /tmp/wheelhouse
COPY hcp_lab_pycache.py /usr/lib/python3/dist-packages/hcp_lab_pycache.py
# policy-rc.d: no daemon starts during the build; empty apt lists afterwards, as in BASE.
RUN printf '#!/bin/sh\\nexit 101\\n' >/usr/sbin/policy-rc.d && chmod 0755 /usr/sbin/policy-rc.d \\
 && apt-get update -qq \\
 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq -o Dpkg::Options::=--force-confold ${pkgs} >/dev/null \\
 && apt-get clean && rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin /usr/sbin/policy-rc.d \\
 && python3 -m venv --system-site-packages /opt/hcp/venv \\
 && /opt/hcp/venv/bin/pip install -q --disable-pip-version-check --no-input --no-index \\
      --find-links /tmp/wheelhouse -r /tmp/wheelhouse/requirements.txt \\
 && /opt/hcp/venv/bin/python -c 'import tpm2_pytss.ESAPI, cryptography, flask, pkcs11' \\
 && rm -rf /tmp/wheelhouse /root/.cache \\
 && echo 'import hcp_lab_pycache' >/usr/lib/python3/dist-packages/hcp-lab-pycache.pth \\
 && python3 -c 'import sys, zipimport; assert "hcp_lab_pycache" in sys.modules, "pth not loaded"' 
LABEL ${LABEL}=${want}
DOCKERFILE
  local candidate="${IMAGE%%:*}:candidate-$$"
  log "building ${IMAGE} from ${BASE}: ${pkgs}"
  DOCKER_BUILDKIT=0 "$DOCKER" build -q -t "${candidate}" "${ctx}" >"${HCP_CACHE}/lab-image-build.log" 2>&1 || {
    rm -rf "${ctx}"
    tail -n 30 "${HCP_CACHE}/lab-image-build.log" >&2
    die "docker build of ${IMAGE} failed (log: ${HCP_CACHE}/lab-image-build.log)"
  }
  rm -rf "${ctx}"
  promote "${candidate}" "${IMAGE}"
}

image_hash() { "$DOCKER" image inspect -f "{{ index .Config.Labels \"${LABEL}\" }}" "$1" 2>/dev/null || true; }

base_want="$(hash_files "$0")"
if [[ "$(image_hash "${BASE}")" == "${base_want}" && "${FORCE:-0}" != 1 ]]; then
  log "image ${BASE} up to date (${base_want})"
else
  build_base "${base_want}"
fi
# `lab-image.sh base`: BASE only (needs no wheelhouse, so `make test` builds it beside the venv).
[[ "${1:-}" == base ]] && exit 0

[[ -f "${WH}/requirements.txt" ]] || die "no wheelhouse at ${WH} (run tools/wheelhouse.sh first)"

pkgs="$(role_packages) ${LAB_EXTRA_PACKAGES[*]}"
# Inputs of IMAGE: BASE, the package list, the wheel names, the pinned requirements, tools/lab-image/.
full_want="$( { echo "${base_want}"; echo "${pkgs}"; cat "${WH}/requirements.txt" "${LAB_FILES}"/*;
  find "${WH}" -maxdepth 1 -name '*.whl' ! -name 'hcp_core_lib-*' -printf '%f\n' | sort; } | sha256sum | cut -c1-16)"
if [[ "$(image_hash "${IMAGE}")" == "${full_want}" && "${FORCE:-0}" != 1 ]]; then
  log "image ${IMAGE} up to date (${full_want})"
else
  build_full "${pkgs}" "${full_want}"
fi
# Drop earlier builds no container uses any more (untagged images with our label only).
"$DOCKER" image prune -f --filter "label=${LABEL}" >/dev/null || true
