"""Testinfra checks of hcp.core.swtpm on the molecule `tpm` scenario.

The tests run in file order: the restart / dictionary-attack tests come last because they
restart the service.
"""

import base64
import json
import os
import re

import pytest
import testinfra.utils.ansible_runner
from cryptography import x509
from cryptography.hazmat.primitives import serialization

testinfra_hosts = testinfra.utils.ansible_runner.AnsibleRunner(
    os.environ["MOLECULE_INVENTORY_FILE"]
).get_hosts("all")

SERVICE = "hcp-swtpm"
TCP_TCTI = "swtpm:host=127.0.0.1,port=2321"
UNIX_SOCKET = "/run/hcp-swtpm/swtpm.sock"
UNIX_TCTI = "swtpm:path=" + UNIX_SOCKET
STATE_DIR = "/var/lib/hcp/swtpm"
CA_DIR = "/var/lib/hcp/swtpm-localca"
FACT_FILE = "/etc/ansible/facts.d/hcp_swtpm.fact"
EK_HANDLE = "0x81010001"
EK_CERT_NV = "0x1c00002"
# A persistent handle the tests own (the role uses 0x81000001 and 0x8101xxxx).
TEST_HANDLE = "0x81000123"
RESTARTS = 4


def transport(host):
    """swtpm_transport of the host in molecule.yml (tcp when unset)."""
    return host.ansible.get_variables().get("swtpm_transport", "tcp")


def tcti(host):
    return UNIX_TCTI if transport(host) == "unix" else TCP_TCTI


def tpm(host, script, check=True):
    """Run a shell script with tpm2-tools pointed at the host's swtpm TCTI."""
    cmd = host.run(
        "set -eu; export TPM2TOOLS_TCTI=%s TSS2_LOG=all+NONE; cd \"$(mktemp -d)\"; %s"
        % (tcti(host), script)
    )
    if check:
        assert cmd.rc == 0, "rc=%d\nstdout:\n%s\nstderr:\n%s" % (cmd.rc, cmd.stdout, cmd.stderr)
    return cmd


def da_state(host):
    """Return (lockout counter, inLockout) from TPM2_GetCapability(properties-variable)."""
    out = tpm(host, "tpm2_getcap properties-variable").stdout
    counter = int(re.search(r"TPM2_PT_LOCKOUT_COUNTER:\s*(0x[0-9a-fA-F]+)", out).group(1), 16)
    in_lockout = int(re.search(r"inLockout:\s*(\d+)", out).group(1))
    return counter, in_lockout


# Uses a DA-protected object (an owner primary without `noda`, authorised with its empty
# password). Only after such a use does a non-orderly stop count as a DA failure, so this
# is what makes the restart test meaningful.
USE_DA_OBJECT = (
    "tpm2_createprimary -Q -C o -G ecc -c prim.ctx && "
    "tpm2_create -Q -C prim.ctx -G ecc -u k.pub -r k.priv && "
    "tpm2_flushcontext -t"
)


def restart_and_wait(host):
    assert host.run("systemctl restart %s" % SERVICE).rc == 0
    tpm(host, "for i in $(seq 50); do tpm2_getcap properties-fixed >/dev/null 2>&1 && exit 0; sleep 0.2; done; exit 1")


def test_packages(host):
    for name in ("swtpm", "swtpm-tools", "tpm2-tools"):
        assert host.package(name).is_installed


def test_service_enabled_and_running(host):
    svc = host.service(SERVICE)
    assert svc.is_enabled
    assert svc.is_running
    unit = host.run("systemctl show -p User,NoNewPrivileges,ProtectSystem %s" % SERVICE).stdout
    assert "User=tss" in unit
    assert "NoNewPrivileges=yes" in unit
    assert "ProtectSystem=strict" in unit
    assert host.run("ps -o user= -C swtpm").stdout.split() == ["tss"]


def _listening(host):
    """(address, port) of every listening TCP socket, from /proc (no ss/netstat needed)."""
    result = set()
    for table, family in (("/proc/net/tcp", 4), ("/proc/net/tcp6", 6)):
        content = host.file(table).content_string if host.file(table).exists else ""
        for line in content.splitlines()[1:]:
            fields = line.split()
            if fields[3] != "0A":  # TCP_LISTEN
                continue
            addr_hex, port_hex = fields[1].split(":")
            if family == 4:
                addr = ".".join(str(b) for b in reversed(bytes.fromhex(addr_hex)))
            else:
                addr = "ipv6:" + addr_hex
            result.add((addr, int(port_hex, 16)))
    return result


def test_listens_on_loopback_only(host):
    swtpm_sockets = {s for s in _listening(host) if s[1] in (2321, 2322)}
    if transport(host) == "unix":
        assert swtpm_sockets == set()
    else:
        assert swtpm_sockets == {("127.0.0.1", 2321), ("127.0.0.1", 2322)}


def test_unix_sockets(host):
    if transport(host) != "unix":
        pytest.skip("tcp transport")
    run_dir = host.file(os.path.dirname(UNIX_SOCKET))
    assert (run_dir.user, run_dir.group, run_dir.mode) == ("tss", "tss", 0o750)
    for path in (UNIX_SOCKET, UNIX_SOCKET + ".ctrl"):
        sock = host.file(path)
        assert sock.is_socket
        assert (sock.user, sock.mode) == ("tss", 0o660)
    # the unit has no network at all in this mode
    assert "PrivateNetwork=yes" in host.run("systemctl show -p PrivateNetwork %s" % SERVICE).stdout
    # other users cannot reach the TPM
    assert host.run("runuser -u nobody -- env TSS2_LOG=all+NONE tpm2_getcap -T %s properties-fixed" % UNIX_TCTI).rc != 0


def test_state_dir(host):
    state = host.file(STATE_DIR)
    assert state.is_directory
    assert state.user == "tss"
    assert state.group == "tss"
    assert state.mode == 0o700
    permall = host.file(STATE_DIR + "/tpm2-00.permall")
    assert permall.user == "tss"
    assert permall.mode & 0o077 == 0


def test_localca_dir(host):
    ca = host.file(CA_DIR)
    assert ca.is_directory
    assert ca.user == "root"
    assert ca.mode == 0o700
    for key in ("signkey.pem", "swtpm-localca-rootca-privkey.pem"):
        assert host.file(CA_DIR + "/" + key).exists
    # the service account cannot reach the CA keys
    assert host.run("runuser -u tss -- test -r %s/signkey.pem" % CA_DIR).rc != 0


def test_fact_file(host):
    fact = host.file(FACT_FILE)
    assert fact.user == "root"
    assert fact.mode == 0o644
    data = json.loads(fact.content_string)
    assert data["tcti"] == tcti(host)
    assert data["transport"] == transport(host)
    assert data["ek_rsa_handle"] == EK_HANDLE
    assert data["vendor_ca"]["root_cert"] == CA_DIR + "/swtpm-localca-rootca-cert.pem"
    assert data["vendor_ca"]["issuer_cert"] == CA_DIR + "/issuercert.pem"
    for path in data["vendor_ca"].values():
        assert host.file(path).is_file


def test_ansible_local_fact(host):
    facts = host.ansible("ansible.builtin.setup", "filter=ansible_local", check=False)
    assert facts["ansible_facts"]["ansible_local"]["hcp_swtpm"]["tcti"] == tcti(host)


def test_ek_and_cert_present(host):
    handles = tpm(host, "tpm2_getcap handles-persistent").stdout
    assert EK_HANDLE in handles
    assert "0x81000001" in handles  # SRK
    nv = tpm(host, "tpm2_getcap handles-nv-index").stdout
    assert "0x1c00002" in nv.lower().split()


def _ek_cert(host):
    der_b64 = tpm(host, "tpm2_nvread %s -o ek.der 2>/dev/null && base64 -w0 ek.der" % EK_CERT_NV).stdout
    return x509.load_der_x509_certificate(base64.b64decode(der_b64))


def test_ek_cert_verifies_in_container(host):
    """EK certificate chains to the vendor root CA, checked on the node."""
    script = (
        "tpm2_nvread %s -o ek.der 2>/dev/null && "
        "openssl x509 -inform DER -in ek.der -out ek.pem && "
        "openssl verify -CAfile %s/swtpm-localca-rootca-cert.pem -untrusted %s/issuercert.pem ek.pem"
        % (EK_CERT_NV, CA_DIR, CA_DIR)
    )
    if host.exists("openssl"):
        assert "ek.pem: OK" in tpm(host, script).stdout
    else:
        # gnutls-bin comes with swtpm-tools (swtpm_localca uses certtool)
        out = tpm(
            host,
            "tpm2_nvread %s -o ek.der 2>/dev/null && "
            "certtool --certificate-info --inder --infile ek.der > chain.pem && "
            "cat %s/issuercert.pem >> chain.pem && "
            "certtool --verify --load-ca-certificate %s/swtpm-localca-rootca-cert.pem --infile chain.pem"
            % (EK_CERT_NV, CA_DIR, CA_DIR),
        ).stdout
        assert "Chain verification output: Verified" in out


def test_ek_cert_verifies_against_exported_vendor_ca(host):
    """The controller copy of the vendor CA (fetched by the role) verifies the EK cert."""
    export_dir = os.path.join(os.environ["MOLECULE_EPHEMERAL_DIRECTORY"], "vendor-ca")
    name = host.backend.get_hostname()
    with open(os.path.join(export_dir, name + "-swtpm-rootca.pem"), "rb") as f:
        root = x509.load_pem_x509_certificate(f.read())
    with open(os.path.join(export_dir, name + "-swtpm-issuer.pem"), "rb") as f:
        issuer = x509.load_pem_x509_certificate(f.read())
    # the exported files are exactly the node's CA certificates, and no key was exported
    for node_path, cert in (("/swtpm-localca-rootca-cert.pem", root), ("/issuercert.pem", issuer)):
        node_pem = host.file(CA_DIR + node_path).content_string.strip()
        assert node_pem == cert.public_bytes(serialization.Encoding.PEM).decode().strip()
    exported = sorted(f for f in os.listdir(export_dir) if f.startswith(name + "-"))
    assert exported == [name + "-swtpm-issuer.pem", name + "-swtpm-rootca.pem"]
    ek = _ek_cert(host)
    root.verify_directly_issued_by(root)
    issuer.verify_directly_issued_by(root)
    ek.verify_directly_issued_by(issuer)
    # the certificate is for the EK at 0x81010001
    pub = tpm(host, "tpm2_readpublic -c %s -f pem -o ek-pub.pem >/dev/null && cat ek-pub.pem" % EK_HANDLE).stdout
    assert ek.public_key().public_numbers() == serialization.load_pem_public_key(pub.encode()).public_numbers()


@pytest.fixture
def test_key(host):
    """A persistent key owned by the test, removed afterwards."""
    tpm(host, "tpm2_evictcontrol -C o -c %s >/dev/null 2>&1 || true" % TEST_HANDLE)
    tpm(
        host,
        "tpm2_createprimary -Q -C o -G ecc -a 'fixedtpm|fixedparent|sensitivedataorigin|userwithauth|noda|restricted|decrypt' -c p.ctx && "
        "tpm2_evictcontrol -C o -c p.ctx %s >/dev/null && tpm2_flushcontext -t" % TEST_HANDLE,
    )
    yield TEST_HANDLE
    tpm(host, "tpm2_evictcontrol -C o -c %s >/dev/null" % TEST_HANDLE)


def test_restarts_keep_state_and_do_not_lock_out(host, test_key):
    """4 restarts in a row, each after using a DA-protected object: state survives, no DA failure."""
    read_keys = (
        "tpm2_readpublic -c %s -o ek.pub >/dev/null && tpm2_readpublic -c %s -o k.pub >/dev/null && "
        "sha256sum ek.pub k.pub | cut -d' ' -f1" % (EK_HANDLE, test_key)
    )
    before = tpm(host, read_keys).stdout.split()
    assert da_state(host) == (0, 0)
    for dummy in range(RESTARTS):
        tpm(host, USE_DA_OBJECT)
        restart_and_wait(host)
    assert da_state(host) == (0, 0)
    assert tpm(host, read_keys).stdout.split() == before
    # a DA-protected authorisation still works
    tpm(host, USE_DA_OBJECT)
    assert host.service(SERVICE).is_running


def test_unorderly_stop_is_detected(host):
    """Control: a SIGKILL after using a DA-protected object does count (so the test above can fail).

    Cleans up with TPM2_DictionaryAttackLockReset (empty lockout password on swtpm).
    """
    tpm(host, USE_DA_OBJECT)
    assert host.run("systemctl kill -s SIGKILL %s" % SERVICE).rc == 0
    # Restart=on-failure brings it back
    tpm(host, "for i in $(seq 50); do sleep 0.2; tpm2_getcap properties-fixed >/dev/null 2>&1 && exit 0; done; exit 1")
    try:
        assert da_state(host)[0] == 1
    finally:
        tpm(host, "tpm2_dictionarylockout -c")
    assert da_state(host) == (0, 0)
    assert host.service(SERVICE).is_running
