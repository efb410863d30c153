#!/usr/bin/env bash
# Build the vagrant box of molecule/vagrant locally from Debian packages (no box registry):
# debootstrap minbase bookworm from the host's Debian mirror with Debian's cloud kernel (TPM CRB/TIS
# drivers built in, so the VM sees /dev/tpmrm0), systemd, udev, OpenSSH and python3, plus the Debian
# packages hcp.core.runtime installs (its runtime_packages default): the VM's network is host-only
# (no route to a mirror), so the role must find them present and only copy the wheelhouse and build
# the venv. Then one ext4 partition in a raw disk populated without mounting (mke2fs -d), extlinux
# as boot loader, qcow2, and a libvirt box (metadata.json + box.img) added to vagrant under
# VAGRANT_HOME=/var/cache/hcp-lab/vagrant/vagrant.d as hcp-lab/bookworm-vm-HASH. Machine-wide, like
# the lab images in docker: every checkout (and every CI clone) uses the one box of its inputs.
#
# HASH covers the inputs (this script, the runtime package list, the SSH public key): nothing is
# rebuilt while they are unchanged (FORCE=1 rebuilds). The box name carries the hash because
# vagrant-libvirt keeps each box's disk in the libvirt pool under the box's name: a new name is
# the only way a changed box reaches new VMs. Older boxes and their pool volumes are removed.
# Login: root with the key /var/cache/hcp-lab/vagrant/box/id_ed25519 (made once here; vagrant's insecure key
# is not used, and nothing needs to be swapped at `vagrant up`). Each VM makes its own SSH host
# keys at first boot. Needs root (chroot, loop mount for extlinux).
set -euo pipefail
# shellcheck source=tools/lib.sh
source "$(dirname "$0")/lib.sh"

# Also in molecule/vagrant/molecule.yml (VAGRANT_HOME) and molecule/vagrant/vars/main.yml.
VAGRANT_CACHE=/var/cache/hcp-lab/vagrant
OUT="${VAGRANT_CACHE}/box"
export VAGRANT_HOME="${VAGRANT_CACHE}/vagrant.d"
mkdir -p "${VAGRANT_CACHE%/*}" && install -d -m 0700 "${VAGRANT_CACHE}"
# One build at a time on the machine (molecule/vagrant/create.yml also runs this script, and may
# start while `make test` builds the box in another lane: it waits here, then finds the box).
exec 9>"${VAGRANT_CACHE}/build.lock"
if ! flock -n 9; then
  log "waiting for another build of the box"
  flock -w "${LOCK_TIMEOUT:-900}" 9 || die "lock ${VAGRANT_CACHE}/build.lock not obtained"
fi
export VAGRANT_CHECKPOINT_DISABLE=1 VAGRANT_DEFAULT_PROVIDER=libvirt
BOX_PREFIX=hcp-lab/bookworm-vm
SUITE=bookworm
DISK_GIB=2
# The VM's base: boot (kernel, initramfs), systemd + udev (networkd waits for udev), DHCP from
# systemd-networkd, sshd (+ sftp for Ansible's file transfer), python3 for Ansible.
# sudo: vagrant runs its guest commands through it, even as root.
PACKAGES=(linux-image-cloud-amd64 initramfs-tools systemd systemd-sysv udev openssh-server openssh-sftp-server python3 sudo)

# runtime_packages of roles/runtime/defaults/main.yml (the role's public package list).
runtime_packages() {
  "${HCP_ROOT}/.venv/bin/python" - "${HCP_ROOT}/roles/runtime/defaults/main.yml" <<'PY'
import sys
import yaml
with open(sys.argv[1], encoding="utf-8") as f:
    print(" ".join(yaml.safe_load(f)["runtime_packages"]))
PY
}

mkdir -p "${OUT}"
[[ -f "${OUT}/id_ed25519" ]] || ssh-keygen -q -t ed25519 -N '' -C hcp-vagrant-box -f "${OUT}/id_ed25519"
read -r -a rt_pkgs <<<"$(runtime_packages)"
want="$( { cat "$0"; echo "${rt_pkgs[*]}"; cat "${OUT}/id_ed25519.pub"; } | sha256sum | cut -c1-16)"
name="${BOX_PREFIX}-${want}"

if [[ "${FORCE:-0}" != 1 && -f "${OUT}/box.name" && "$(cat "${OUT}/box.name")" == "$name" ]] \
  && vagrant box list 2>/dev/null | grep -q "^${name} "; then
  log "box ${name} up to date"
  exit 0
fi
[[ $EUID -eq 0 ]] || die "building the box needs root (debootstrap, chroot, loop mount)"
for tool in debootstrap sfdisk mkfs.ext4 extlinux qemu-img vagrant; do
  command -v "$tool" >/dev/null || die "${tool} missing (run tools/host-packages.sh)"
done

ROOTFS="${OUT}/rootfs" MNT="${OUT}/mnt" RAW="${OUT}/disk.raw" LOG="${OUT}/build.log"
cleanup() {
  mountpoint -q "${MNT}" && umount "${MNT}"
  rm -rf "${ROOTFS}" "${MNT}" "${RAW}" "${OUT}/box"
}
trap cleanup EXIT
cleanup
mkdir -p "${ROOTFS}" "${MNT}" "${OUT}/box"
: >"${LOG}"

# A small initramfs (what the disk needs; the kernel loads the rest of its drivers from the root
# fs): decompressing it is CPU time under TCG. Written before debootstrap so that the kernel's
# installation builds the initramfs once, already small.
install -d "${ROOTFS}/etc/initramfs-tools/conf.d" "${ROOTFS}/usr/share/initramfs-tools/modules.d"
echo MODULES=list >"${ROOTFS}/etc/initramfs-tools/conf.d/hcp-box.conf"
printf '%s\n' virtio_pci virtio_blk >"${ROOTFS}/usr/share/initramfs-tools/modules.d/hcp-box"

MIRROR="$(debian_mirror)"
all="$(IFS=,; echo "${PACKAGES[*]},${rt_pkgs[*]}")"
log "debootstrap ${SUITE} from ${MIRROR}: ${all}"
debootstrap --variant=minbase --include="${all}" "${SUITE}" "${ROOTFS}" "${MIRROR}" >>"${LOG}" 2>&1 || {
  tail -n 30 "${LOG}" >&2
  die "debootstrap failed (log: ${LOG})"
}

log "configuring the guest"
# Root mounted read-write from the start, no fsck (a VM lives minutes; less work under TCG).
cat >"${ROOTFS}/etc/fstab" <<'EOF'
/dev/vda1 / ext4 errors=remount-ro 0 0
EOF
echo hcp-vm >"${ROOTFS}/etc/hostname"
: >"${ROOTFS}/etc/machine-id"
rm -f "${ROOTFS}/var/lib/dbus/machine-id"
# DHCP on the first Ethernet link (the libvirt host-only network).
cat >"${ROOTFS}/etc/systemd/network/50-dhcp.network" <<'EOF'
[Match]
Name=en* eth*

[Network]
DHCP=ipv4
EOF
chroot "${ROOTFS}" systemctl enable systemd-networkd.service >>"${LOG}" 2>&1
# Root logs in with the box key only; each VM gets its own host keys at first boot.
install -d -m 0700 "${ROOTFS}/root/.ssh"
install -m 0600 "${OUT}/id_ed25519.pub" "${ROOTFS}/root/.ssh/authorized_keys"
rm -f "${ROOTFS}"/etc/ssh/ssh_host_*
install -d "${ROOTFS}/etc/systemd/system/ssh.service.d"
# (ExecStartPre= first: the unit's own `sshd -t` would fail before the keys exist.)
cat >"${ROOTFS}/etc/systemd/system/ssh.service.d/hostkeys.conf" <<'EOF'
[Service]
ExecStartPre=
ExecStartPre=/usr/bin/ssh-keygen -A
ExecStartPre=/usr/sbin/sshd -t
EOF
cat >"${ROOTFS}/etc/ssh/sshd_config.d/hcp-box.conf" <<'EOF'
PasswordAuthentication no
UseDNS no
EOF
kver="$(basename "$(find "${ROOTFS}/boot" -name 'vmlinuz-*' | sort | tail -n 1)")"
kver="${kver#vmlinuz-}"
install -d "${ROOTFS}/boot/extlinux"
cat >"${ROOTFS}/boot/extlinux/extlinux.conf" <<EOF
DEFAULT debian
TIMEOUT 0
LABEL debian
  LINUX /boot/vmlinuz-${kver}
  INITRD /boot/initrd.img-${kver}
  APPEND root=/dev/vda1 rw console=ttyS0 quiet
EOF
chroot "${ROOTFS}" apt-get clean
rm -rf "${ROOTFS}"/var/lib/apt/lists/* "${ROOTFS}"/var/cache/apt/*.bin "${ROOTFS}"/tmp/* "${ROOTFS}"/var/log/*.log

log "disk image (${DISK_GIB} GiB, ext4 on vda1, extlinux)"
truncate -s "${DISK_GIB}G" "${RAW}"
echo 'start=2048, type=83, bootable' | sfdisk -q "${RAW}" >>"${LOG}" 2>&1
# 64bit and metadata_csum off: syslinux 6.04 cannot read an ext4 with them.
mkfs.ext4 -q -F -L root -O ^64bit,^metadata_csum -E offset=$((2048 * 512)) -d "${ROOTFS}" \
  "${RAW}" "$((DISK_GIB * 1024 * 1024 - 1024))k" >>"${LOG}" 2>&1
mount -o loop,offset=$((2048 * 512)) "${RAW}" "${MNT}"
extlinux --install "${MNT}/boot/extlinux" >>"${LOG}" 2>&1
umount "${MNT}"
dd if=/usr/lib/EXTLINUX/mbr.bin of="${RAW}" bs=440 count=1 conv=notrunc status=none
qemu-img convert -O qcow2 "${RAW}" "${OUT}/box/box.img"
printf '{"provider": "libvirt", "format": "qcow2", "virtual_size": %d}\n' "${DISK_GIB}" >"${OUT}/box/metadata.json"
tar -C "${OUT}/box" -cf "${OUT}/box.box" metadata.json box.img

log "adding ${name} to vagrant (VAGRANT_HOME=${VAGRANT_HOME})"
vagrant box add --force --name "${name}" "${OUT}/box.box" >>"${LOG}" 2>&1 || {
  tail -n 20 "${LOG}" >&2
  die "vagrant box add failed (log: ${LOG})"
}
rm -f "${OUT}/box.box"
echo "${name}" >"${OUT}/box.name"
# Older boxes of ours: out of vagrant and out of libvirt's pool (vagrant-libvirt names a box's
# volume <box name with / as -VAGRANTSLASH->_vagrant_box_image_<version>_<mtime>_box.img).
vagrant box list 2>/dev/null | awk -v p="${BOX_PREFIX}-" -v n="${name}" 'index($1, p) == 1 && $1 != n {print $1}' \
  | while read -r old; do
    vagrant box remove --force --all "${old}" >>"${LOG}" 2>&1 || true
  done
vol_prefix="${BOX_PREFIX//\//-VAGRANTSLASH-}-"
virsh -c qemu:///system vol-list default 2>/dev/null | awk -v p="${vol_prefix}" -v h="-${want}_" \
  'index($1, p) == 1 && index($1, h) == 0 {print $1}' | while read -r vol; do
  virsh -c qemu:///system vol-delete --pool default "${vol}" >>"${LOG}" 2>&1 || true
done
log "box ${name} built ($(du -sh "${VAGRANT_HOME}/boxes/${name//\//-VAGRANTSLASH-}" | cut -f1))"
