# -*- coding: utf-8 -*-
# Copyright: hcp.core contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The attack on secret output: ONE real ansible-playbook run at -vvv whose tasks use every module
and lookup of the collection that handles a secret WITHOUT no_log (the mistake an operator makes),
against a real swtpm, the real control tower app over TLS and the real attestation app. No secret
may reach stdout or stderr, in clear, base64 or hex; the values the tasks asked for
(return_content) must still reach their registered variables (checked by assert tasks)."""
from __future__ import annotations

import base64
import json
import os
import subprocess
import sys

from cryptography.hazmat.primitives import serialization

from ansible_collections.hcp.core.plugins.module_utils.tpm.ekpub import ek_public_b64
from ansible_collections.hcp.core.plugins.module_utils.unseal import shamir
from ansible_collections.hcp.core.tests.unit.helpers import AttestSite

TEXT_SECRET = "hcp-text-secret-7f3a9c1e5b2d4068"
BINARY_SECRET = bytes(range(200, 232))  # not UTF-8: content_b64
ATTEST_SECRET = b"hcp-attested-db-pw-51c0ffee"
PROFILE = {"assets": ["hostname", "rootfs-key", "secrets"], "secrets": ["db-password"]}

PLAYBOOK = r"""
- hosts: localhost
  gather_facts: false
  vars:
    tower: &tower
      url: "{{ t.tower.url }}"
      ca_file: "{{ t.tower.ca_file }}"
      client_cert: "{{ t.tower.client_cert }}"
      client_key: "{{ t.tower.client_key }}"
    attested: "{{ {'servers': [t.attest_url], 'signer_public_file': t.signer_file, 'tcti': t.tcti, 'state_dir': t.dir ~ '/state'} }}"
  tasks:
    - name: tpm_seal a text secret
      hcp.core.tpm_seal: {ekpub: "{{ t.ekpub }}", content: "{{ t.text }}", dest: "{{ t.dir }}/text.env"}
    - name: tpm_seal a binary file
      hcp.core.tpm_seal: {ekpub: "{{ t.ekpub }}", src: "{{ t.dir }}/binary.in", dest: "{{ t.dir }}/binary.env"}
    - name: tpm_unseal to a file
      hcp.core.tpm_unseal: {tcti: "{{ t.tcti }}", src: "{{ t.dir }}/text.env", dest: "{{ t.dir }}/text.out"}
    - name: tpm_unseal with return_content, text
      hcp.core.tpm_unseal: {tcti: "{{ t.tcti }}", src: "{{ t.dir }}/text.env", return_content: true}
      register: unsealed_text
    - name: tpm_unseal with return_content, binary
      hcp.core.tpm_unseal: {tcti: "{{ t.tcti }}", src: "{{ t.dir }}/binary.env", return_content: true}
      register: unsealed_binary
    - name: shamir_share write
      hcp.core.shamir_share: {path: "{{ t.dir }}/share", share: "{{ t.share }}", protect_with_tpm: require, tcti: "{{ t.tcti }}"}
    - name: shamir_share read without return_content
      hcp.core.shamir_share: {path: "{{ t.dir }}/share", state: read, tcti: "{{ t.tcti }}"}
      register: read_checked
    - name: shamir_share read with return_content
      hcp.core.shamir_share: {path: "{{ t.dir }}/share", state: read, tcti: "{{ t.tcti }}", return_content: true}
      register: read_share
    - name: site_unseal init at the control tower
      hcp.core.site_unseal:
        <<: *tower
        action: init
        site: site-x
        controllers: [c1, c2, c3]
        dest: "{{ t.dir }}/seal.key"
        key_format: hex
        return_content: true
      register: site_init
    - name: export the new shares for the test (plumbing, not under test)
      ansible.builtin.lineinfile: {line: "{{ site_init.shares | to_json }}", path: "{{ t.dir }}/shares.json", create: true, mode: "0600"}
      no_log: true
    - name: site_unseal unseal through the tower
      hcp.core.site_unseal:
        url: "{{ t.tower.url }}"
        ca_file: "{{ t.tower.ca_file }}"
        site: site-x
        shares: ["{{ site_init.shares.c1 }}", "{{ site_init.shares.c3 }}"]
        dest: "{{ t.dir }}/seal2.key"
        key_format: base64
    - name: attest and install the assets
      hcp.core.attest: {servers: ["{{ t.attest_url }}"], signer_public_file: "{{ t.signer_file }}", tcti: "{{ t.tcti }}",
                        root: "{{ t.dir }}/root", state_dir: "{{ t.dir }}/state"}
    - name: site_credentials
      hcp.core.site_credentials: {path: "{{ t.dir }}/creds", site: x, server_names: [localhost], client_names: [orchestrator]}
    - name: the secrets asked for reached the registered variables; the others were not returned
      ansible.builtin.assert:
        that:
          - unsealed_text.content == t.text
          - unsealed_binary.content_b64 == t.binary_b64
          - read_share.share == t.share
          - read_checked.share is not defined and read_checked.reinit_needed == false
          - site_init.shares | length == 3
          - lookup('hcp.core.attested_secret', 'secret-db-password', **attested) == t.attest_secret
          - lookup('hcp.core.attested_secret', 'rootfs.key', encoding='base64', **attested) | length == 88
    - name: a lookup failing on a binary asset names the asset only
      ansible.builtin.debug:
        msg: "{{ lookup('hcp.core.attested_secret', 'rootfs.key', **attested) }}"
      ignore_errors: true
"""


def _forms(secret):
    """Every encoding under which a secret could be printed: bytes, text, base64, hex."""
    data = secret.encode() if isinstance(secret, str) else secret
    return {data, base64.b64encode(data), base64.urlsafe_b64encode(data).rstrip(b"="), data.hex().encode(),
            data.hex().upper().encode()}


def test_no_secret_in_verbose_playbook_output(swtpm, control_tower, tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path / "run"))
    (tmp_path / "run").mkdir()
    (tmp_path / "root").mkdir()
    (tmp_path / "binary.in").write_bytes(BINARY_SECRET)
    site = AttestSite(swtpm, tmp_path, profile=PROFILE, secrets={"db-password": ATTEST_SECRET})
    share = shamir.split(b"known share secret " * 3, 3)[0]
    with swtpm.open() as tpm:
        ekpub = ek_public_b64(tpm.ek_public())
    facts = {"dir": str(tmp_path), "tcti": swtpm.tcti, "ekpub": ekpub, "tower": control_tower, "text": TEXT_SECRET,
             "binary_b64": base64.b64encode(BINARY_SECRET).decode(), "share": share.to_text(), "attest_url": site.url,
             "signer_file": str(site.signer_file), "attest_secret": ATTEST_SECRET.decode()}
    (tmp_path / "vars.json").write_text(json.dumps({"t": facts}))
    (tmp_path / "play.yml").write_text(PLAYBOOK)
    collections = os.path.abspath(shamir.__file__)
    for dummy in range(7):  # <here>/ansible_collections/hcp/core/plugins/module_utils/unseal/shamir.py
        collections = os.path.dirname(collections)
    env = dict(os.environ, ANSIBLE_COLLECTIONS_PATH=collections, ANSIBLE_LOCALHOST_WARNING="false",
               ANSIBLE_INVENTORY_UNPARSED_WARNING="false", ANSIBLE_NOCOLOR="1", ANSIBLE_FORCE_COLOR="0")
    command = [os.path.join(os.path.dirname(sys.executable), "ansible-playbook"), "-vvv", "-c", "local", "-i", "localhost,",
               "-e", "ansible_python_interpreter=%s" % sys.executable, "-e", "@%s" % (tmp_path / "vars.json"),
               str(tmp_path / "play.yml")]
    try:
        proc = subprocess.run(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=600, check=False)
    finally:
        site.close()
    output = proc.stdout + proc.stderr
    text = output.decode("utf-8", "replace")

    # the secrets: known ones, and those made during the run (read back from where they were written)
    secrets = {"tpm_seal/tpm_unseal text": TEXT_SECRET, "tpm_seal/tpm_unseal binary": BINARY_SECRET,
               "shamir_share share": share.to_text(), "shamir_share share bytes": share.to_bytes(),
               "attested secret": ATTEST_SECRET}
    made = dict((name, tmp_path / name) for name in ("shares.json", "seal.key", "seal2.key", "root/etc/hcp/rootfs.key", "creds"))
    if made["shares.json"].exists():
        for name, value in json.loads(made["shares.json"].read_text()).items():
            secrets["site_unseal share " + name] = value
            secrets["site_unseal share bytes " + name] = shamir.Share.from_text(value).to_bytes()
    if made["seal.key"].exists():
        secrets["site_unseal seal key"] = bytes.fromhex(made["seal.key"].read_text().strip())
    if made["root/etc/hcp/rootfs.key"].exists():
        secrets["attest rootfs.key"] = made["root/etc/hcp/rootfs.key"].read_bytes()
    for label in ("ca", "signer", "server", "client-orchestrator"):
        if (made["creds"] / ("%s.key" % label)).exists():
            pem = (made["creds"] / ("%s.key" % label)).read_bytes()
            key = serialization.load_pem_private_key(pem, None)
            secrets["site_credentials %s.key" % label] = key.private_bytes(
                serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
            secrets["site_credentials %s.key PEM body" % label] = b"".join(pem.splitlines()[1:-1])

    leaked = sorted("%s as %r" % (name, form[:24]) for name, value in secrets.items() for form in _forms(value)
                    if form in output)
    assert not leaked, "secrets in the -vvv output: %s" % leaked
    assert b"PRIVATE KEY" not in output
    assert proc.returncode == 0, text[-6000:]
    assert all(path.exists() for path in made.values()) and len(secrets) == 5 + 6 + 1 + 1 + 8
    assert base64.b64decode(made["seal2.key"].read_text()) == secrets["site_unseal seal key"]
    # the results holding secrets were hidden (2 tpm_unseal, 1 shamir_share, 1 site_unseal init; + the no_log plumbing)
    assert text.count("the output has been hidden") == 5, text[-6000:]
    assert "is not UTF-8 text; use encoding=base64" in text  # the failing lookup's message, asset named only
    assert (tmp_path / "text.out").read_text() == TEXT_SECRET
