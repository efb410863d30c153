#!/usr/bin/env bash
# Install the host (controller) packages the repo needs, including every tool a unit test
# needs (under CI a skipped unit test fails: tools/check-skips.py). apt-get update runs only
# when something is missing, so a second run costs one dpkg-query.
set -euo pipefail
# shellcheck source=tools/lib.sh
source "$(dirname "$0")/lib.sh"
take_lock apt

PACKAGES=(
  swtpm swtpm-tools tpm2-tools libtss2-dev pkg-config
  docker.io debootstrap git rsync shellcheck
  heimdal-clients heimdal-kdc softhsm2 openssl systemd
  nginx-light uwsgi-core uwsgi-plugin-python3 wrk
  openssh-server
  libkrb5-dev
  prometheus chromium
  libvirt-daemon-system qemu-system-x86 qemu-utils vagrant vagrant-libvirt extlinux fdisk
)
# prometheus: for promtool only (make alert-rules); its server stays off. chromium: the headless
# browser of the status page test (tests/unit/plugins/module_utils/web/test_status_page_browser.py).
# wrk: the compiled load generator of benchmarks/attest_load.py (make bench; Debian 12 has 4.1.0).
# libvirt-daemon-system, qemu-system-x86, vagrant, vagrant-libvirt: the vagrant scenario (molecule/vagrant:
# a VM under qemu/TCG with libvirt's swtpm as its TPM); tools/libvirt-up.sh starts the daemons by hand.
# qemu-utils (qemu-img), extlinux, fdisk (sfdisk): tools/vagrant-box.sh builds that VM's box.
# libkrb5-dev: build dependency of the gssapi wheel (requirements.txt; PyPI has no Linux wheel, its
# build runs krb5-config). It installs next to Heimdal without removing anything.
# Not krb5-user (MIT kinit/klist): it Conflicts with heimdal-clients, and installing it would
# remove heimdal-clients and heimdal-kdc. The MIT side is tested through the MIT GSSAPI library
# that OpenSSH uses (libgssapi-krb5-2), which can also get a TGT itself from a client keytab.

missing=()
for p in "${PACKAGES[@]}"; do
  status="$(dpkg-query -W -f='${db:Status-Abbrev}' "$p" 2>/dev/null || true)"
  [[ "$status" == ii* ]] || missing+=("$p")
done

if ((${#missing[@]} == 0)); then
  log "host packages present"
  exit 0
fi
[[ $EUID -eq 0 ]] || die "missing packages (${missing[*]}) and not root: install them with apt-get"
log "installing: ${missing[*]}"
apt-get update -qq
apt-get install -y -qq -o Dpkg::Options::=--force-confold "${missing[@]}" >/dev/null
# heimdal-kdc is here for its binaries only (the tests start their own KDC on loopback): its
# system KDC and the kadmind entry it adds to inetd (openbsd-inetd comes with it) stay off.
if [[ " ${missing[*]} " == *" heimdal-kdc "* ]]; then
  systemctl disable --now heimdal-kdc openbsd-inetd >/dev/null 2>&1 || true
  update-inetd --disable kerberos-adm >/dev/null 2>&1 || true
fi
# openssh-server is here for sshd (tests start their own on loopback): the system ssh service stays off.
if [[ " ${missing[*]} " == *" openssh-server "* ]]; then
  systemctl disable --now ssh.service ssh.socket >/dev/null 2>&1 || true
fi
# prometheus is here for promtool only: the system Prometheus server stays off.
if [[ " ${missing[*]} " == *" prometheus "* ]]; then
  systemctl disable --now prometheus.service >/dev/null 2>&1 || true
fi
# libvirt is here for the vagrant scenario: its system services stay off (tools/libvirt-up.sh starts
# libvirtd and virtlogd when a scenario needs them, the same on machines with and without systemd).
if [[ " ${missing[*]} " == *" libvirt-daemon-system "* ]]; then
  systemctl disable --now libvirtd.service libvirtd.socket libvirtd-ro.socket libvirtd-admin.socket \
    virtlogd.service virtlogd.socket virtlogd-admin.socket virtlockd.service virtlockd.socket \
    libvirt-guests.service >/dev/null 2>&1 || true
fi
log "host packages installed"
