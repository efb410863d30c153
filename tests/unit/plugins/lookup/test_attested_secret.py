# -*- coding: utf-8 -*-
# Copyright: hcp.core contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""hcp.core.attested_secret with a real swtpm and the attestation app on loopback: values,
encodings, the per-run cache (requests counted on the server), missing assets."""
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

from ansible_collections.hcp.core.plugins.module_utils.attestation import client as attest_client
from ansible_collections.hcp.core.plugins.module_utils.enrollment import pipeline as enroll
from ansible_collections.hcp.core.plugins.module_utils.enrollment.db import EnrollmentDb
from ansible_collections.hcp.core.plugins.module_utils.tpm import envelope
from ansible_collections.hcp.core.tests.unit.helpers import DEAD, AttestSite

PROFILE = {"assets": ["hostname", "rootfs-key", "secrets"], "secrets": ["db-password"]}


@pytest.fixture
def secret_site(swtpm, tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path / "run"))
    (tmp_path / "run").mkdir()
    value = AttestSite(swtpm, tmp_path, profile=PROFILE, secrets={"db-password": b"s3cret-pw"})
    yield value
    value.close()


def _lookup(*terms, **options):
    return lookup_loader.get("hcp.core.attested_secret").run(list(terms), **options)


def test_values_cache_and_encodings(secret_site, swtpm, tmp_path):
    site = secret_site
    options = {"servers": [DEAD, site.url], "signer_public_file": str(site.signer_file), "tcti": swtpm.tcti}
    assert _lookup("secret-db-password", "etc-hostname", **options) == ["s3cret-pw", "node1.example.test\n"]
    assert site.requests == 1
    with swtpm.open() as tpm:
        key = envelope.unseal(tpm, site.db.get(site.hash)["rootfs.key.sealed"])
    assert _lookup("rootfs.key", encoding="base64", **options) == [base64.b64encode(key).decode()]
    assert site.requests == 1  # served from the per-run cache, unsealed locally
    cache_dir = tmp_path / "run" / ("hcp.core-attest-cache-%d" % os.getuid())
    files = [f for f in os.listdir(str(cache_dir)) if f.endswith(".json")]
    assert len(files) == 1 and stat.S_IMODE(os.stat(str(cache_dir)).st_mode) == 0o700
    cached = (cache_dir / files[0]).read_bytes()
    assert stat.S_IMODE(os.stat(str(cache_dir / files[0])).st_mode) == 0o600
    assert b"s3cret-pw" not in cached and base64.b64encode(b"s3cret-pw") not in cached and key.hex().encode() not in cached
    assert json.loads(cached)["files"]["secret-db-password.sealed"]  # the envelope, sealed to the TPM
    with pytest.raises(AnsibleLookupError, match="not UTF-8 text; use encoding=base64"):
        _lookup("rootfs.key", **options)
    with pytest.raises(AnsibleLookupError, match="has no asset secret-nope"):
        _lookup("secret-nope", **options)
    assert site.requests == 1
    # other options, other cache; no cache: every lookup attests
    assert _lookup("etc-hostname", cache=False, **options) == ["node1.example.test\n"]
    assert _lookup("etc-hostname", cache=False, **options) == ["node1.example.test\n"]
    assert site.requests == 3
    # a tampered cache fails the signature check
    record = json.loads(cached)
    record["files"]["etc-hostname"] = base64.b64encode(b"evil\n").decode()
    (cache_dir / files[0]).write_text(json.dumps(record))
    with pytest.raises(AnsibleLookupError, match="does not verify with the trusted asset signer"):
        _lookup("etc-hostname", **options)


def test_purge_and_errors(secret_site, swtpm, tmp_path):
    site = secret_site
    options = {"servers": [site.url], "signer_public_file": str(site.signer_file), "tcti": swtpm.tcti}
    cache = attest_client.PayloadCache({"x": 1})
    os.makedirs(cache.directory, mode=0o700)
    stale = os.path.join(cache.directory, "run-1-0-abc.json")
    open(stale, "w").close()
    assert _lookup("etc-hostname", **options) == ["node1.example.test\n"]
    assert not os.path.exists(stale)
    with pytest.raises(AnsibleLookupError, match="exactly one of signer_public"):
        _lookup("etc-hostname", servers=[site.url])
    with pytest.raises(AnsibleLookupError, match="all 2 attestation servers failed"):
        _lookup("etc-hostname", servers=[DEAD, DEAD + "0"], signer_public=site.signer.decode(), tcti=swtpm.tcti)
    os.chmod(cache.directory, 0o755)
    with pytest.raises(AnsibleLookupError, match="not a private directory"):
        _lookup("etc-hostname", **options)


def test_run_process_is_the_parent_of_a_fork_only():
    """A fork (an ansible-playbook worker) is keyed by its parent."""
    read_end, write_end = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover - runs in the child
        os.write(write_end, str(attest_client.run_process()).encode())
        os._exit(0)
    os.close(write_end)
    value = int(os.read(read_end, 64))
    os.close(read_end)
    os.waitpid(child, 0)
    assert value == os.getpid()
    assert attest_client.process_start_time(os.getpid()) is not None


def test_one_playbook_run_attests_once(secret_site, swtpm, tmp_path):
    """A real ansible-playbook run: lookups in two tasks (forked workers) share one attestation;
    the next run attests again."""
    site = secret_site
    playbook = tmp_path / "play.yml"
    lookup = ("{{ lookup('hcp.core.attested_secret', 'secret-db-password', servers=['%s'], signer_public_file='%s', "
              "tcti='%s') }}" % (site.url, site.signer_file, swtpm.tcti))
    playbook.write_text(
        "- hosts: localhost\n  gather_facts: false\n  tasks:\n"
        "    - ansible.builtin.copy: {content: \"%s\", dest: \"%s/one\", mode: \"0600\"}\n"
        "    - ansible.builtin.copy: {content: \"%s\", dest: \"%s/two\", mode: \"0600\"}\n"
        % (lookup, tmp_path, lookup, tmp_path))
    collections = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(
        os.path.abspath(attest_client.__file__)))))
    env = dict(os.environ, ANSIBLE_COLLECTIONS_PATH=os.path.dirname(os.path.dirname(collections)),
               ANSIBLE_LOCALHOST_WARNING="false", ANSIBLE_INVENTORY_UNPARSED_WARNING="false")
    command = [os.path.join(os.path.dirname(sys.executable), "ansible-playbook"), "-c", "local", "-i", "localhost,",
               "-e", "ansible_python_interpreter=%s" % sys.executable,
               str(playbook)]
    for run_index in (1, 2):
        proc = subprocess.run(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=300,
                              check=False)
        assert proc.returncode == 0, proc.stdout.decode()[-3000:]
        assert site.requests == run_index
    assert (tmp_path / "one").read_text() == (tmp_path / "two").read_text() == "s3cret-pw"


def test_lookup_refuses_a_rolled_back_entry_by_default(secret_site, swtpm, tmp_path, attest_state_dir):
    """The lookup remembers the newest generation without being asked (attest_state_dir is its
    default memory, moved to the test's directory): an older, validly signed entry is refused."""
    site = secret_site
    old_path = str(tmp_path / "old.git")
    subprocess.run(["git", "clone", "-q", "--bare", site.db.path, old_path], check=True)
    current = site.db.get(site.hash)
    _h, host, files, _s = enroll.build_entry(site.config, current["ek.pub"], "node1.example.test",
                                             json.loads(current["clientprofile"]), operation="reenroll")
    enroll.store_entry(site.db, site.config, site.hash, host, files, replace=True)
    options = {"servers": [site.url], "signer_public_file": str(site.signer_file), "tcti": swtpm.tcti, "cache": False}
    assert _lookup("etc-hostname", **options) == ["node1.example.test\n"]
    site.attestor.db_provider = lambda: EnrollmentDb(old_path)
    with pytest.raises(AnsibleLookupError, match="older than generation 3"):
        _lookup("etc-hostname", **options)
    assert _lookup("etc-hostname", state_dir=str(tmp_path / "other"), **options) == ["node1.example.test\n"]
