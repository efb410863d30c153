# -*- coding: utf-8 -*-
# Copyright: hcp.core contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The attack on hcp.core.cryptstore's output: a real ansible-playbook run at -vvv whose tasks put,
read, export and import items WITHOUT no_log (the mistake an operator makes), against real swtpm
TPMs. No item data may reach stdout or stderr, in clear, base64 or hex; the values asked for
(return_content) must reach their registered variables. (The same attack for the other modules:
test_secrets_masked.py.)"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys

from ansible_collections.hcp.core.plugins.modules import cryptstore
from ansible_collections.hcp.core.plugins.module_utils.tpm.ekpub import ek_public_b64

TEXT = "hcp-cryptstore-module-secret-4b7e0a19"
BINARY = bytes(range(180, 240))


def _ekpub(tpm_fixture):
    with tpm_fixture.open() as tpm:
        return ek_public_b64(tpm.ek_public())


PLAYBOOK = r"""
- hosts: localhost
  gather_facts: false
  tasks:
    - name: put a text secret (no no_log on the task)
      hcp.core.cryptstore: {path: "{{ t.dir }}/a", tcti: "{{ t.tcti_a }}", name: db-password, data: "{{ t.text }}", exportable: true}
    - name: put a binary secret
      hcp.core.cryptstore: {path: "{{ t.dir }}/a", tcti: "{{ t.tcti_a }}", name: blob, data_b64: "{{ t.binary_b64 }}",
                            type: binary-blob, exportable: true}
    - name: put from a file
      hcp.core.cryptstore: {path: "{{ t.dir }}/a", tcti: "{{ t.tcti_a }}", name: from-file, src: "{{ t.dir }}/secret.in", type: key}
    - name: read without return_content, to a file
      hcp.core.cryptstore: {path: "{{ t.dir }}/a", tcti: "{{ t.tcti_a }}", name: from-file, dest: "{{ t.dir }}/out/from-file"}
    - name: read with return_content, text
      hcp.core.cryptstore: {path: "{{ t.dir }}/a", tcti: "{{ t.tcti_a }}", name: db-password, return_content: true}
      register: text
    - name: read with return_content, binary
      hcp.core.cryptstore: {path: "{{ t.dir }}/a", tcti: "{{ t.tcti_a }}", name: blob, return_content: true}
      register: binary
    - name: export to TPM B
      hcp.core.cryptstore: {path: "{{ t.dir }}/a", tcti: "{{ t.tcti_a }}", state: exported, ekpub: "{{ t.ekpub_b }}",
                            bundle_path: "{{ t.dir }}/b.bundle"}
    - name: import on TPM B
      hcp.core.cryptstore: {path: "{{ t.dir }}/b", tcti: "{{ t.tcti_b }}", state: imported, bundle_path: "{{ t.dir }}/b.bundle"}
    - name: a failing task (wrong TPM) shows its error, not the data
      hcp.core.cryptstore: {path: "{{ t.dir }}/a", tcti: "{{ t.tcti_b }}", name: db-password, data: "{{ t.text }}"}
      ignore_errors: true
    - name: the values asked for reached the registered variables
      ansible.builtin.assert:
        that:
          - text.content == t.text
          - binary.content_b64 == t.binary_b64
"""


def test_no_item_data_in_verbose_playbook_output(swtpm, other_swtpm, tmp_path):
    file_secret = b"-----BEGIN TEST KEY-----\nfile-secret-0d3c9a77e1\n-----END TEST KEY-----\n"
    (tmp_path / "secret.in").write_bytes(file_secret)
    (tmp_path / "out").mkdir(mode=0o700)
    facts = {"dir": str(tmp_path), "tcti_a": swtpm.tcti, "tcti_b": other_swtpm.tcti, "ekpub_b": _ekpub(other_swtpm),
             "text": TEXT, "binary_b64": base64.b64encode(BINARY).decode()}
    (tmp_path / "vars.json").write_text(json.dumps({"t": facts}))
    (tmp_path / "play.yml").write_text(PLAYBOOK)
    collections = os.path.abspath(cryptstore.__file__)
    for dummy in range(5):  # <here>/ansible_collections/hcp/core/plugins/modules/cryptstore.py
        collections = os.path.dirname(collections)
    env = dict(os.environ, ANSIBLE_COLLECTIONS_PATH=collections, ANSIBLE_LOCALHOST_WARNING="false",
               ANSIBLE_INVENTORY_UNPARSED_WARNING="false", ANSIBLE_NOCOLOR="1", ANSIBLE_FORCE_COLOR="0")
    command = [os.path.join(os.path.dirname(sys.executable), "ansible-playbook"), "-vvv", "-c", "local", "-i", "localhost,",
               "-e", "ansible_python_interpreter=%s" % sys.executable, "-e", "@%s" % (tmp_path / "vars.json"), str(tmp_path / "play.yml")]
    proc = subprocess.run(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=600, check=False)
    output = proc.stdout + proc.stderr
    text = output.decode("utf-8", "replace")
    forms = {}
    for label, secret in (("text", TEXT.encode()), ("binary", BINARY), ("file", file_secret)):
        forms.update({"%s raw" % label: secret, "%s b64" % label: base64.b64encode(secret), "%s hex" % label: secret.hex().encode()})
    forms["file line"] = b"file-secret-0d3c9a77e1"
    leaked = sorted(label for label, form in forms.items() if form in output)
    assert not leaked, "item data in the -vvv output: %s" % leaked
    assert proc.returncode == 0, text[-6000:]
    assert text.count("the output has been hidden") == 2, text[-6000:]  # the two return_content reads
    assert "refusing to open it" in text  # the wrong-TPM failure is readable
    assert (tmp_path / "out" / "from-file").read_bytes() == file_secret


FROM_KEYSERVER_PLAYBOOK = r"""
- hosts: localhost
  gather_facts: false
  vars:
    source: &source
      url: "{{ t.url }}"
      ca_file: "{{ t.ca_file }}"
      client_cert: "{{ t.cert }}"
      client_key: "{{ t.key }}"
  tasks:
    - name: retrieve a text item from the key-server (no no_log on the task)
      hcp.core.cryptstore:
        path: "{{ t.dir }}/store"
        tcti: "{{ t.tcti }}"
        name: vhd-key
        type: key
        from_keyserver: {<<: *source, name: datica-test/vhd-key}
    - name: again (unchanged)
      hcp.core.cryptstore:
        path: "{{ t.dir }}/store"
        tcti: "{{ t.tcti }}"
        name: vhd-key
        type: key
        from_keyserver: {<<: *source, name: datica-test/vhd-key}
      register: again
    - name: retrieve a binary item
      hcp.core.cryptstore:
        path: "{{ t.dir }}/store"
        tcti: "{{ t.tcti }}"
        name: blob
        type: binary-blob
        from_keyserver: {<<: *source, name: datica-test/blob}
    - name: a refused retrieve (non-exportable item asked for as exportable) shows its error, not the data
      hcp.core.cryptstore:
        path: "{{ t.dir }}/store"
        tcti: "{{ t.tcti }}"
        name: bound
        exportable: true
        from_keyserver: {<<: *source, name: datica-test/bound}
      ignore_errors: true
    - name: the item is unchanged the second time
      ansible.builtin.assert:
        that:
          - again is not changed
          - again.keyserver.item_version == 1
"""


def test_no_key_server_item_in_verbose_playbook_output(swtpm, other_swtpm, tmp_path):
    """The same attack on ``from_keyserver``: a real ansible-playbook -vvv retrieving items from the
    real key-server app (TLS, proof of possession) into a cryptstore, without no_log."""
    # imported here: the key-server site needs Flask and requests, the test above does not
    from ansible_collections.hcp.core.tests.unit.keyserver_helpers import M1, KeyServerSite  # pylint: disable=import-outside-toplevel

    site = KeyServerSite(swtpm, tmp_path).start()
    try:
        deploy = site.client("deploy")
        deploy.store("datica-test/vhd-key", TEXT)
        deploy.store("datica-test/blob", BINARY)
        deploy.store("datica-test/bound", TEXT + "-bound", exportable=False, measurements=[M1])
        cert, key = site.cred("node1")
        facts = {"dir": str(tmp_path), "tcti": other_swtpm.tcti, "url": site.url, "ca_file": site.ca_file, "cert": cert, "key": key}
        (tmp_path / "vars.json").write_text(json.dumps({"t": facts}))
        (tmp_path / "play.yml").write_text(FROM_KEYSERVER_PLAYBOOK)
        collections = os.path.abspath(cryptstore.__file__)
        for dummy in range(5):  # <here>/ansible_collections/hcp/core/plugins/modules/cryptstore.py
            collections = os.path.dirname(collections)
        env = dict(os.environ, ANSIBLE_COLLECTIONS_PATH=collections, ANSIBLE_LOCALHOST_WARNING="false",
                   ANSIBLE_INVENTORY_UNPARSED_WARNING="false", ANSIBLE_NOCOLOR="1", ANSIBLE_FORCE_COLOR="0")
        command = [os.path.join(os.path.dirname(sys.executable), "ansible-playbook"), "-vvv", "-c", "local", "-i", "localhost,",
                   "-e", "ansible_python_interpreter=%s" % sys.executable, "-e", "@%s" % (tmp_path / "vars.json"),
                   str(tmp_path / "play.yml")]
        proc = subprocess.run(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=600, check=False)
    finally:
        site.close()
    output = proc.stdout + proc.stderr
    text = output.decode("utf-8", "replace")
    forms = {}
    for label, secret in (("text", TEXT.encode()), ("binary", BINARY), ("bound", (TEXT + "-bound").encode())):
        forms.update({"%s raw" % label: secret, "%s b64" % label: base64.b64encode(secret), "%s hex" % label: secret.hex().encode()})
    leaked = sorted(label for label, form in forms.items() if form in output)
    assert not leaked, "item data in the -vvv output: %s" % leaked
    assert proc.returncode == 0, text[-6000:]
    assert "is not exportable" in text  # the refusal is readable
