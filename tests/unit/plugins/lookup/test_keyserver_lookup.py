# -*- coding: utf-8 -*-
# Copyright: hcp.core contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""hcp.core.keyserver against the real key-server app over TLS: values, encodings, versions, the
options from the environment, the per-run credential cache (one proof of possession for several
lookups, counted in the server's audit log), refusals."""
from __future__ import annotations

import base64
import os
import stat

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
