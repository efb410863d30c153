#!/usr/bin/env bash
# Build the lab image hcp-lab/debian:bookworm locally (no registry): debootstrap
# bookworm from the host's Debian mirror, then `docker import` with CMD /sbin/init.
# The image carries the hash of this script as a label; it is rebuilt only when the
# script changes (or FORCE=1). Docker 20.10's import knows no STOPSIGNAL: systemd wants
# SIGRTMIN+3, so containers set it themselves (or are removed with force). After a build a container is booted to check that
# systemd reaches running/degraded.
set -euo pipefail
# shellcheck source=tools/lib.sh
source "$(dirname "$0")/lib.sh"
take_lock lab-image

IMAGE="${LAB_IMAGE:-hcp-lab/debian:bookworm}"
SUITE=bookworm
LABEL=org.hcp.lab.build-hash
PACKAGES=(
  systemd systemd-sysv dbus python3 python3-venv python3-apt python3-packaging ca-certificates
  iproute2 procps sudo
  swtpm swtpm-tools tpm2-tools
  libtss2-esys-3.0.2-0 libtss2-tctildr0 libtss2-mu0 libtss2-rc0 libtss2-sys1 libtss2-fapi1
  libtss2-tcti-swtpm0 libtss2-tcti-device0 libtss2-tcti-tabrmd0
)
# systemd units that cannot work in an unprivileged container.
MASK_UNITS=(
  systemd-remount-fs.service systemd-udevd.service systemd-udev-trigger.service
  systemd-modules-load.service sys-kernel-config.mount sys-kernel-debug.mount
  sys-kernel-tracing.mount getty.target console-getty.service
)

want="$(hash_files "$0")"
have="$("$DOCKER" image inspect -f "{{ index .Config.Labels \"${LABEL}\" }}" "$IMAGE" 2>/dev/null || true)"
if [[ "$have" == "$want" && "${FORCE:-0}" != 1 ]]; then
  log "image ${IMAGE} up to date (${want})"
  exit 0
fi

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
CANDIDATE="${IMAGE%%:*}:candidate-$$"
log "importing ${IMAGE}"
tar -C "${ROOTFS}" --numeric-owner -c . | "$DOCKER" import \
  --change 'CMD ["/sbin/init"]' \
  --change 'ENV container=docker' \
  --change "LABEL ${LABEL}=${want}" \
  - "${CANDIDATE}" >/dev/null

log "checking that systemd boots in ${CANDIDATE}"
if ! "$(dirname "$0")/lab-boot-check.sh" "${CANDIDATE}"; then
  "$DOCKER" image rm -f "${CANDIDATE}" >/dev/null 2>&1 || true
  die "systemd did not come up in the new image; ${IMAGE} left as it was"
fi
"$DOCKER" tag "${CANDIDATE}" "${IMAGE}"
"$DOCKER" image rm "${CANDIDATE}" >/dev/null
# Drop earlier builds no container uses any more (untagged images with our label only).
"$DOCKER" image prune -f --filter "label=${LABEL}" >/dev/null || true
log "image ${IMAGE} built ($("$DOCKER" image inspect -f '{{ .Size }}' "${IMAGE}") bytes)"
