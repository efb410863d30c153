# -*- coding: utf-8 -*-
# Copyright: hcp.core contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Items of the host's cryptstore fetched from the key-server (seed 003, scenario 1: the deployed
host retrieves the keys by name and keeps them in its cryptstore). The host calls with its
attested key-server client certificate; keyserver/client.py answers the auth-challenge with the
certificate's key (proof of possession). Used by module hcp.core.cryptstore
(``state: present`` with ``from_keyserver``); docs/cryptstore.md, "Items from the key-server"."""

from __future__ import annotations

from ansible_collections.hcp.core.plugins.module_utils.cryptstore.errors import CryptStoreError, NotExportableError
from ansible_collections.hcp.core.plugins.module_utils.keyserver.client import KeyServerClient
from ansible_collections.hcp.core.plugins.module_utils.keyserver.names import validate_name

# Where attestation installs the host's https-client asset (docs/enrollment-assets.md).
DEFAULT_CLIENT_CERT = "/etc/hcp/https-client/https-client.pem"
DEFAULT_CLIENT_KEY = "/etc/hcp/https-client/https-client.key"
SOURCE_KEYS = ("url", "name", "version", "ca_file", "client_cert", "client_key", "timeout", "credential_dir")


def _source(source):
    if not isinstance(source, dict):
        raise CryptStoreError("from_keyserver must be a mapping with url and name")
    unknown = sorted(set(source) - set(SOURCE_KEYS))
    if unknown:
        raise CryptStoreError("from_keyserver: unknown key %s (known: %s)" % (ascii(unknown[0])[:40], ", ".join(SOURCE_KEYS)))
    url, name, version = source.get("url"), source.get("name"), source.get("version")
    if not isinstance(url, str) or not url.startswith("https://"):
        raise CryptStoreError("from_keyserver.url must be the key-server's https:// URL")
    validate_name(name)
    if version is not None and (isinstance(version, bool) or not isinstance(version, int) or version < 1):
        raise CryptStoreError("from_keyserver.version must be an integer >= 1 (omit it for the latest)")
    credential_dir = source.get("credential_dir")
    if credential_dir is not None and (not isinstance(credential_dir, str) or not credential_dir.startswith("/")):
        raise CryptStoreError("from_keyserver.credential_dir must be an absolute path")
    timeout = source.get("timeout") or 30
    if isinstance(timeout, bool) or not isinstance(timeout, int) or not 0 < timeout <= 600:
        raise CryptStoreError("from_keyserver.timeout must be 1..600 seconds")
    return dict(source, timeout=timeout)


def fetch(source, exportable=False, client_class=KeyServerClient):
    """``(data, meta)`` of the key-server item ``source`` names: ``{"url", "name", "version"
    (None = the latest), "ca_file", "client_cert", "client_key", "timeout", "credential_dir"}``;
    the client certificate and key default to the host's attested https-client asset; a valid
    short-lived credential in ``credential_dir`` (left by the host's attestation) is preferred. ``meta``: name,
    item_version, created, exportable (never the data). ``exportable``: whether the caller will
    store the item exportable here: refused (NotExportableError, nothing fetched into the store)
    for an item the key-server keeps non-exportable, which must not leave this host."""
    source = _source(source)
    client_cert = source.get("client_cert") or DEFAULT_CLIENT_CERT
    client_key = source.get("client_key") or (DEFAULT_CLIENT_KEY if client_cert == DEFAULT_CLIENT_CERT else None)
    client = client_class(source["url"], ca_file=source.get("ca_file"), client_cert=client_cert, client_key=client_key,
                          timeout=source["timeout"], credential_dir=source.get("credential_dir"))
    result = client.retrieve(source["name"], source.get("version"))
    data = result.pop("data")
    meta = dict((key, result.get(key)) for key in ("name", "item_version", "created", "exportable"))
    if exportable and meta["exportable"] is not True:
        raise NotExportableError("key-server item %s is not exportable: it cannot be stored here with exportable: true"
                                 % source["name"])
    return data, meta
