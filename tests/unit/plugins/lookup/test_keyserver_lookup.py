# -*- coding: utf-8 -*-
# Copyright: hcp.core contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""hcp.core.keyserver against the real key-server app over TLS: values, encodings, versions, the
options from the environment, the per-run credential cache (one proof of possession for several
lookups, counted in the server's audit log), refusals."""
from __future__ import annotations

import base64
import json
import os
import stat
import subprocess
import sys

import pytest
from ansible.errors import AnsibleLookupError
from ansible.plugins.loader import lookup_loader

from ansible_collections.hcp.core.tests.unit.keyserver_helpers import KeyServerSite

NAME = "datica-test/storage-disk-key"


@pytest.fixture
def site(swtpm, tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path / "run"))
    (tmp_path / "run").mkdir()
    value = KeyServerSite(swtpm, tmp_path).start()
    value.store.store(NAME, b"disk-key-1")
    value.store.store(NAME, b"disk-key-2")
    value.store.store("datica-test/binary", b"\xff\x00")
    yield value
    value.close()


def _lookup(*terms, **options):
    return lookup_loader.get("hcp.core.keyserver").run(list(terms), **options)


def _options(site, who="node1"):
    cert, key = site.cred(who)
    return {"url": site.url, "ca_file": site.ca_file, "client_cert": cert, "client_key": key}


def test_values_versions_and_cache(site, tmp_path):
    options = _options(site)
    assert _lookup(NAME, **options) == ["disk-key-2"]
    assert _lookup(NAME, item_version=1, **options) == ["disk-key-1"]
    assert _lookup("datica-test/binary", encoding="base64", **options) == [base64.b64encode(b"\xff\x00").decode()]
    with pytest.raises(AnsibleLookupError, match="not UTF-8 text; use encoding=base64"):
        _lookup("datica-test/binary", **options)
    challenges = [r for r in site.audit() if r["decision"] == "challenge"]
    assert len(challenges) == 1  # four lookups, one proof of possession: the session token was cached
    cache_dir = tmp_path / "run" / ("hcp.core-keyserver-cache-%d" % os.getuid())
    files = [f for f in os.listdir(str(cache_dir)) if f.endswith(".json")]
    assert len(files) == 1 and stat.S_IMODE(os.stat(str(cache_dir)).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(str(cache_dir / files[0])).st_mode) == 0o600
    assert b"disk-key" not in (cache_dir / files[0]).read_bytes()
    assert _lookup(NAME, cache=False, **options) == ["disk-key-2"]
    assert len([r for r in site.audit() if r["decision"] == "challenge"]) == 2


def test_options_from_the_environment(site, monkeypatch):
    options = _options(site)
    monkeypatch.setenv("HCP_KEYSERVER_URL", options.pop("url"))
    monkeypatch.setenv("HCP_CA_FILE", options.pop("ca_file"))
    assert _lookup(NAME, **options) == ["disk-key-2"]


def test_refusals(site):
    with pytest.raises(AnsibleLookupError, match="hcp.core.keyserver: .*no item datica-test/nope"):
        _lookup("datica-test/nope", **_options(site))
    with pytest.raises(AnsibleLookupError, match="lacks the key-server client purpose"):
        _lookup(NAME, **_options(site, "plain"))
    with pytest.raises(AnsibleLookupError, match="starts or ends with '/'"):
        _lookup("datica-test/x/", **_options(site))


SECRET = "hcp-keyserver-secret-0b5e77a1c9"
BINARY = bytes(range(200, 232))
PLAYBOOK = r"""
- hosts: localhost
  gather_facts: false
  vars:
    deploy: &deploy {url: "{{ t.url }}", ca_file: "{{ t.ca }}", client_cert: "{{ t.deploy_cert }}", client_key: "{{ t.deploy_key }}"}
    node: {url: "{{ t.url }}", ca_file: "{{ t.ca }}", client_cert: "{{ t.node_cert }}", client_key: "{{ t.node_key }}"}
  tasks:
    - name: store a text item (no no_log on the task)
      hcp.core.keyserver_item: {<<: *deploy, name: datica-test/text, data: "{{ t.secret }}"}
    - name: store a binary item
      hcp.core.keyserver_item: {<<: *deploy, name: datica-test/binary, data_b64: "{{ t.binary_b64 }}"}
    - name: store again, check mode
      hcp.core.keyserver_item: {<<: *deploy, name: datica-test/text, data: "{{ t.secret }}"}
      check_mode: true
      register: again
    - name: retrieve in two tasks (two forked workers) into files
      ansible.builtin.copy: {content: "{{ lookup('hcp.core.keyserver', 'datica-test/text', **node) }}", dest: "{{ t.dir }}/one", mode: "0600"}
    - name: second
      ansible.builtin.copy:
        content: "{{ lookup('hcp.core.keyserver', 'datica-test/binary', encoding='base64', **node) }}"
        dest: "{{ t.dir }}/two"
        mode: "0600"
    - name: a refused store names the cause, not the data
      hcp.core.keyserver_item: {<<: *deploy, name: other/text, data: "{{ t.secret }}"}
      ignore_errors: true
    - ansible.builtin.assert:
        that: [again is not changed]
"""


def test_playbook_run_shows_no_secret_and_proves_once_per_run(site, tmp_path):
    """A real ansible-playbook -vvv: the module's data never printed in any encoding; the lookups of
    two tasks (forked workers) share one proof of possession (the per-run credential cache)."""
    cert, key = site.cred("deploy")
    ncert, nkey = site.cred("node1")
    facts = {"url": site.url, "ca": site.ca_file, "deploy_cert": cert, "deploy_key": key, "node_cert": ncert,
             "node_key": nkey, "secret": SECRET, "binary_b64": base64.b64encode(BINARY).decode(), "dir": str(tmp_path)}
    (tmp_path / "vars.json").write_text(json.dumps({"t": facts}))
    (tmp_path / "play.yml").write_text(PLAYBOOK)
    collections = os.path.abspath(lookup_loader.find_plugin("hcp.core.keyserver"))
    for _level in range(6):  # <here>/ansible_collections/hcp/core/plugins/lookup/keyserver.py
        collections = os.path.dirname(collections)
    env = dict(os.environ, ANSIBLE_COLLECTIONS_PATH=collections, ANSIBLE_LOCALHOST_WARNING="false",
               ANSIBLE_INVENTORY_UNPARSED_WARNING="false", ANSIBLE_NOCOLOR="1")
    command = [os.path.join(os.path.dirname(sys.executable), "ansible-playbook"), "-vvv", "-c", "local", "-i", "localhost,",
               "-e", "ansible_python_interpreter=%s" % sys.executable, "-e", "@%s" % (tmp_path / "vars.json"),
               str(tmp_path / "play.yml")]
    challenges = len([r for r in site.audit() if r["decision"] == "challenge"])
    proc = subprocess.run(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=600, check=False)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output.decode("utf-8", "replace")[-4000:]
    assert (tmp_path / "one").read_text() == SECRET and (tmp_path / "two").read_text() == base64.b64encode(BINARY).decode()
    for data in (SECRET.encode(), BINARY):
        for form in (data, base64.b64encode(data), data.hex().encode()):
            assert form not in output, form
    assert b"denied" in output and b"other/text" in output
    node_challenges = [r for r in site.audit()[challenges:] if r["decision"] == "challenge" and r["caller"] == "node1.example.test"]
    assert len(node_challenges) == 1
