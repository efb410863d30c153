# -*- coding: utf-8 -*-
# Copyright: hcp.core contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Export bundles of the cryptstore (bundle format v1, docs/cryptstore.md).

An export takes exportable items out of a store and seals them, as one JSON payload, to
ANOTHER TPM's EK with ``tpm/envelope.py`` (done off that TPM: only its EK public is needed), so
nothing leaves the host in clear. Only the TPM owning that EK can open the bundle (import);
the envelope's AES-GCM authenticates the payload, so a modified bundle is refused.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
import time

from ansible_collections.hcp.core.plugins.module_utils.cryptstore.errors import BundleError, CryptStoreError, NotExportableError
from ansible_collections.hcp.core.plugins.module_utils.cryptstore.store import (
    ITEM_TYPES,
    MAX_ITEM_BYTES,
    MAX_ITEMS,
    canonical,
    validate_item,
    validate_name,
)
from ansible_collections.hcp.core.plugins.module_utils.errors import EnvelopeError, EnvelopeIntegrityError, TpmError, WrongTpmError
from ansible_collections.hcp.core.plugins.module_utils.jsonutil import JsonInputError
from ansible_collections.hcp.core.plugins.module_utils.jsonutil import loads as json_loads
from ansible_collections.hcp.core.plugins.module_utils.tpm import envelope as env_mod
from ansible_collections.hcp.core.plugins.module_utils.tpm.device import ekpubhash
from ansible_collections.hcp.core.plugins.module_utils.tpm.ekpub import load_ek_public

FORMAT = "hcp.core.cryptstore.bundle"
PAYLOAD_FORMAT = "hcp.core.cryptstore.bundle-payload"
VERSION = 1
SUPPORTED_VERSIONS = (1,)
MAX_PAYLOAD_BYTES = 16 * 1024 * 1024
MAX_BUNDLE_BYTES = MAX_PAYLOAD_BYTES * 4 // 3 + 64 * 1024


def _b64(data):
    return base64.b64encode(data).decode("ascii")


def _items_for_export(store, names):
    """[Item], sorted by name: ``names`` (each must exist and be exportable), or every exportable item."""
    if names is None:
        items = [item for item in (store.get(name) for name in store.names()) if item.exportable]
        if not items:
            raise CryptStoreError("cryptstore %s has no exportable item" % store.path)
        return items
    names = [validate_name(name) for name in names]
    if not names:
        raise CryptStoreError("no item named for the export")
    if len(set(names)) != len(names):
        raise CryptStoreError("an item is named twice for the export")
    items = sorted((store.get(name) for name in names), key=lambda item: item.name)
    refused = [item.name for item in items if not item.exportable]
    if refused:
        raise NotExportableError("cryptstore %s: item(s) %s are not exportable (stored without exportable=true); nothing was "
                                 "exported" % (store.path, ", ".join(refused)))
    return items


def _content(items, target):
    return {"target": target, "items": [[item.name, item.type, _b64(item.data)] for item in items]}


def export_bundle(store, target_ek, names=None):
    """(bundle dict, [names]): the items ``names`` (default: every exportable item) of the open
    ``store``, sealed to the TPM owning ``target_ek`` (anything load_ek_public accepts)."""
    public = load_ek_public(target_ek)
    target = ekpubhash(public)
    items = _items_for_export(store, names)
    payload = {"format": PAYLOAD_FORMAT, "version": VERSION, "created": int(time.time()),
               "source": {"store_id": store.store_id, "ekpubhash": store.ekpubhash},
               "items": [{"name": item.name, "type": item.type, "data": _b64(item.data)} for item in items]}
    raw = canonical(payload)
    if len(raw) > MAX_PAYLOAD_BYTES:
        raise CryptStoreError("the export would be %d bytes, over the %d-byte bundle limit: export fewer items at once"
                              % (len(raw), MAX_PAYLOAD_BYTES))
    envelope = env_mod.seal(public, raw, None, fingerprint=False)
    bundle = {"format": FORMAT, "version": VERSION, "ekpubhash": target, "envelope": envelope}
    bundle["source_mac"] = _b64(store.fingerprint({"content": _content(items, target), "envelope": envelope}))
    return bundle, [item.name for item in items]


def dumps(bundle):
    """A bundle as UTF-8 JSON bytes (keys sorted, trailing newline)."""
    return (json.dumps(bundle, sort_keys=True, indent=1) + "\n").encode("utf-8")


def loads(raw):
    """Parse and check the outer layer of a bundle (bytes or str): BundleError when malformed."""
    try:
        bundle = json_loads(raw, "the cryptstore bundle", MAX_BUNDLE_BYTES, max_depth=8)
    except JsonInputError as exc:
        raise BundleError(str(exc)) from None
    if not isinstance(bundle, dict) or bundle.get("format") != FORMAT:
        raise BundleError("not a cryptstore bundle (format must be %r)" % FORMAT)
    if bundle.get("version") not in SUPPORTED_VERSIONS:
        raise BundleError("unsupported cryptstore bundle version %r: this hcp.core reads version(s) %s"
                          % (bundle.get("version"), ", ".join(map(str, SUPPORTED_VERSIONS))))
    try:
        bundle["envelope"] = env_mod.loads(bundle.get("envelope"))
    except EnvelopeError as exc:
        raise BundleError("the bundle's envelope is unusable: %s" % exc) from None
    if bundle.get("ekpubhash") != bundle["envelope"]["ekpubhash"]:
        raise BundleError("the bundle names EK %s… but its envelope is sealed to EK %s…: tampered with"
                          % (str(bundle.get("ekpubhash"))[:16], bundle["envelope"]["ekpubhash"][:16]))
    return bundle


def current_export(store, raw, target_ek, names=None):
    """The names of the items in ``raw`` (an existing bundle) when this ``store`` exported it for
    ``target_ek`` with exactly the content an export of ``names`` would have now; else None.
    No TPM needed: the check is an HMAC under a key only this store holds."""
    try:
        bundle = loads(raw)
        mac = base64.b64decode(bundle.get("source_mac", ""), validate=True)
    except (BundleError, binascii.Error, ValueError, TypeError):
        return None
    target = ekpubhash(load_ek_public(target_ek))
    if bundle["ekpubhash"] != target:
        return None
    items = _items_for_export(store, names)
    expected = store.fingerprint({"content": _content(items, target), "envelope": bundle["envelope"]})
    return [item.name for item in items] if hmac.compare_digest(mac, expected) else None


def open_bundle(tpm, raw):
    """Unseal the bundle ``raw`` on ``tpm`` (its target): (source dict, [(name, type, data)])."""
    bundle = loads(raw)
    try:
        plaintext = env_mod.unseal(tpm, bundle["envelope"])
    except WrongTpmError:
        raise BundleError("the bundle was exported for the TPM with EK %s…, not for this TPM (EK %s…): nothing was imported"
                          % (bundle["ekpubhash"][:16], tpm.ekpubhash()[:16])) from None
    except EnvelopeIntegrityError as exc:
        raise BundleError("the bundle failed authentication, it was tampered with: %s; nothing was imported" % exc) from None
    except (EnvelopeError, TpmError) as exc:
        raise BundleError("cannot open the bundle: %s; nothing was imported" % exc) from None
    try:
        payload = json_loads(plaintext, "the bundle's payload", MAX_PAYLOAD_BYTES, max_depth=8)
    except JsonInputError as exc:
        raise BundleError(str(exc)) from None
    if not isinstance(payload, dict) or payload.get("format") != PAYLOAD_FORMAT or payload.get("version") not in SUPPORTED_VERSIONS:
        raise BundleError("the bundle's payload is not a version-%s cryptstore bundle payload" % VERSION)
    source, entries = payload.get("source"), payload.get("items")
    if not isinstance(source, dict) or not isinstance(entries, list) or not entries or len(entries) > MAX_ITEMS:
        raise BundleError("the bundle's payload lacks its source or holds 0 or over %d items" % MAX_ITEMS)
    items = []
    for entry in entries:
        if not isinstance(entry, dict) or set(entry) != {"name", "type", "data"} or entry["type"] not in ITEM_TYPES:
            raise BundleError("the bundle holds a malformed item")
        if not isinstance(entry["data"], str) or len(entry["data"]) > MAX_ITEM_BYTES * 4 // 3 + 4:
            raise BundleError("the bundle's item %s is malformed or too large" % str(entry["name"])[:80])
        try:
            data = base64.b64decode(entry["data"], validate=True)
        except (binascii.Error, ValueError):
            raise BundleError("the bundle's item %s is not base64" % str(entry["name"])[:80]) from None
        validate_item(entry["name"], entry["type"], data)
        items.append((entry["name"], entry["type"], data))
    if len(set(name for name, _kind, _data in items)) != len(items):
        raise BundleError("the bundle names an item twice")
    return {"store_id": str(source.get("store_id"))[:64], "ekpubhash": str(source.get("ekpubhash"))[:64]}, items


def import_bundle(store, tpm, raw, exportable=False, force=False, dry_run=False):
    """Import the bundle ``raw`` into the open ``store`` (unsealed on ``tpm``, its target):
    (source dict, {name: "created" | "updated" | "unchanged"}). See CryptStore.put_many."""
    source, items = open_bundle(tpm, raw)
    return source, store.put_many(items, exportable=exportable, force=force, dry_run=dry_run)
