# -*- coding: utf-8 -*-
# Copyright: hcp.core contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""A rolled-back enrollment DB seen by the attestation client: the DB generation (real git), manifest
v2 stamped with it under the DB lock, and the client's generation memory refusing an older, validly
signed entry (real swtpm, the attestation app on loopback)."""
from __future__ import annotations

import json
import os
import stat
import subprocess

import pytest

from ansible_collections.hcp.core.plugins.module_utils.attestation import client as attest_client
from ansible_collections.hcp.core.plugins.module_utils.attestation import server as attest
from ansible_collections.hcp.core.plugins.module_utils.enrollment import manifest as manifest_mod
from ansible_collections.hcp.core.plugins.module_utils.enrollment import pipeline as enroll
from ansible_collections.hcp.core.plugins.module_utils.enrollment.db import EnrollDbError, EnrollmentDb, entry_dir
from ansible_collections.hcp.core.tests.unit.helpers import ATTEST_PROFILE

H1 = "a1" * 32


IDENTITY = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.test", "GIT_COMMITTER_NAME": "t",
            "GIT_COMMITTER_EMAIL": "t@example.test"}


def _git(repo, *args, **kwargs):
    return subprocess.run(["git", "--git-dir", repo] + list(args), capture_output=True, check=True,
                          env=dict(os.environ, **IDENTITY), **kwargs).stdout.decode().strip()


def _snapshot(db, path):
    """A copy of the DB as it is now: what a replica rolled back to this point serves."""
    subprocess.run(["git", "clone", "-q", "--bare", db.path, path], check=True)
    return EnrollmentDb(path)


def _reenroll(site):
    current = site.db.get(site.hash)
    _h, host, files, _s = enroll.build_entry(site.config, current["ek.pub"], "node1.example.test", ATTEST_PROFILE,
                                             operation="reenroll")
    enroll.store_entry(site.db, site.config, site.hash, host, files, replace=True)


def _as_v1(db, signer, ekpubhash):
    """Rewrite the entry's manifest as format v1 (no generation), validly signed: an entry from
    before this change, as an old snapshot holds it."""
    manifest = json.loads(db.get(ekpubhash)["manifest.json"])
    del manifest["generation"]
    manifest["version"] = 1
    data = manifest_mod.serialize(manifest)
    base = entry_dir(ekpubhash)
    with db.lock():
        db._commit("legacy manifest", {base + "/manifest.json": data, base + "/manifest.sig": signer.sign(data)}, ())


def test_db_generation_counts_commits_and_reads_legacy_history(tmp_path):
    db = EnrollmentDb(str(tmp_path / "db"))
    assert db.generation() == 0
    db.init()
    assert db.generation() == 1 and db.read_file("GENERATION") == b"1\n"
    db.add(H1, "one.example.test", {"ek.pub": b"one"})
    first = db.head()
    db.delete(H1)
    assert db.generation() == 3 and db.generation(first) == 2
    # a manifest signed for another generation is refused, the branch does not move
    with pytest.raises(EnrollDbError, match="generation 9, its commit gets 4"):
        db.add(H1, "one.example.test", {"manifest.json": b'{"generation": 9}'})
    with pytest.raises(EnrollDbError, match="generation None"):
        db.add(H1, "one.example.test", {"manifest.json": b"[not json"})
    assert db.generation() == 3
    # a DB written before GENERATION existed: counted once from its first-parent history
    legacy = str(tmp_path / "legacy.git")
    _git(legacy, "init", "-q", "--bare", "--initial-branch", "main")
    blob = _git(legacy, "hash-object", "-w", "--stdin", input=b'{"format": "hcp.core.enrolldb", "version": 1}\n')
    tree = _git(legacy, "mktree", input=b"100644 blob %s\tFORMAT\n" % blob.encode())
    parent = None
    for n in range(3):
        parent = _git(legacy, "commit-tree", tree, "-m", "c%d" % n, *(["-p", parent] if parent else []))
    _git(legacy, "update-ref", "refs/heads/main", parent)
    old = EnrollmentDb(legacy)
    assert old.generation() == 3
    old.add(H1, "one.example.test", {"ek.pub": b"one"})
    assert old.generation() == 4 and old.read_file("GENERATION") == b"4\n"
    # a GENERATION that is not a positive decimal is refused, not guessed
    zero = _git(legacy, "hash-object", "-w", "--stdin", input=b"0\n")
    tree = _git(legacy, "mktree", input=b"100644 blob %s\tFORMAT\n100644 blob %s\tGENERATION\n" % (blob.encode(), zero.encode()))
    _git(legacy, "update-ref", "refs/heads/main", _git(legacy, "commit-tree", tree, "-p", old.head(), "-m", "zero"))
    with pytest.raises(EnrollDbError, match="malformed GENERATION"):
        old.generation()


def test_manifest_generation_is_checked():
    assert manifest_mod.generation({"version": 1}) == 0
    assert manifest_mod.generation({"version": 2, "generation": 5}) == 5
    for bad in (None, 0, -1, True, "5", 2 ** 63):
        with pytest.raises(Exception, match="generation must be"):
            manifest_mod.generation({"version": 2, "generation": bad})


def test_memory_file_is_private_bounded_and_fails_closed(tmp_path):
    state = tmp_path / "state"
    memory = attest_client.GenerationMemory(str(state))
    assert memory.highest(["https://a"], H1) is None
    memory.accept(["https://a", "https://b"], H1, 0, record=False)
    assert not state.exists()  # check only: nothing written
    memory.accept(["https://b", "https://a", "https://a"], H1, 4)
    assert memory.highest(["https://a", "https://b"], H1) == 4  # a set: order and duplicates do not matter
    assert memory.highest(["https://a"], H1) is None  # another server set has its own record
    memory.accept(["https://a", "https://b"], H1, 4)
    with pytest.raises(attest_client.RollbackError, match="generation 3, older than generation 4"):
        memory.accept(["https://a", "https://b"], H1, 3)
    with pytest.raises(attest_client.RollbackError, match="a v1 manifest"):
        memory.accept(["https://a", "https://b"], H1, 0, record=False)
    assert stat.S_IMODE(os.stat(memory.path).st_mode) == 0o600 and stat.S_IMODE(os.stat(state).st_mode) == 0o700
    doc = json.loads(open(memory.path).read())
    assert doc["format"] == "hcp.core.attest-generations" and list(doc["generations"].values())[0]["generation"] == 4
    for data in (b"[", b'{"format": "other"}', b"[" * 100000, b"x" * (2 * 1024 * 1024),
                 json.dumps(dict(doc, generations={"k": {"generation": 1, "time": 1}})).encode()):
        with open(memory.path, "wb") as handle:
            handle.write(data)
        with pytest.raises(attest_client.AttestClientError, match="corrupt"):
            memory.accept(["https://a"], H1, 9)
    os.unlink(memory.path)
    os.symlink(str(tmp_path / "elsewhere"), memory.path)
    with pytest.raises(attest_client.AttestClientError, match="cannot read"):
        memory.accept(["https://a"], H1, 9)
    assert not os.path.exists(str(tmp_path / "elsewhere"))
    os.unlink(memory.path)
    os.chmod(str(state), 0o777)
    with pytest.raises(attest_client.AttestClientError, match="not a directory only this user"):
        memory.accept(["https://a"], H1, 9)


def test_client_refuses_an_older_validly_signed_entry(attest_site, swtpm, tmp_path):
    state = str(tmp_path / "attester-state")
    site = attest_site
    old = _snapshot(site.db, str(tmp_path / "old.git"))
    other = attest.Attestor(lambda: site.db, os.urandom(32), signer_pub=site.signer,
                            vendor_cas=site.attestor.vendor_cas)
    servers = [site.url, attest_client.attestor_transport(other)]
    with swtpm.open() as tpm:
        first = attest_client.fetch(tpm, servers, site.signer, state_dir=state)
        assert first["generation"] == site.db.generation() == 2 and first["server"] == site.url
        _reenroll(site)
        assert attest_client.fetch(tpm, servers, site.signer, state_dir=state)["generation"] == 3
        assert attest_client.fetch(tpm, site.url, site.signer, state_dir=state)["generation"] == 3
        # the attack: the server's replica is rolled back; its entry is the old one, validly signed
        site.attestor.db_provider = lambda: old
        with pytest.raises(attest_client.RollbackError, match="generation 2, older than generation 3"):
            attest_client.fetch(tpm, site.url, site.signer, state_dir=state)
        with pytest.raises(attest_client.RollbackError, match="generation 2, older than generation 3"):
            attest_client.fetch(tpm, site.url, site.signer, state_dir=state, check_only=True)
        # failover passes the rolled-back server by
        result = attest_client.fetch(tpm, servers, site.signer, state_dir=state)
        assert result["server"] == "transport #2" and result["generation"] == 3
        other.db_provider = lambda: old
        with pytest.raises(attest_client.AllServersFailedError) as info:
            attest_client.fetch(tpm, servers, site.signer, state_dir=state)
        assert [isinstance(c[1], attest_client.RollbackError) for c in info.value.causes] == [True, True]
        # without the memory the same answer verifies: only the signed generation tells it is old
        assert attest_client.fetch(tpm, site.url, site.signer)["generation"] == 2
        # an entry from before manifest v2 (no generation) is refused once a v2 was accepted ...
        _as_v1(old, site.config.signer, site.hash)
        with pytest.raises(attest_client.RollbackError, match="a v1 manifest"):
            attest_client.attest(tpm, site.url, site.signer, state_dir=state)
        # ... and accepted as generation 0 by a client that has accepted nothing newer
        fresh = str(tmp_path / "fresh-state")
        assert attest_client.attest(tpm, site.url, site.signer, state_dir=fresh)["generation"] == 0
        site.attestor.db_provider = lambda: site.db
        assert attest_client.attest(tpm, site.url, site.signer, state_dir=fresh)["generation"] == 3
    memory = attest_client.GenerationMemory(state)
    assert memory.highest([site.url, "transport #2"], site.hash) == 3
