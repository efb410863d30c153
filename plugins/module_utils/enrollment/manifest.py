# -*- coding: utf-8 -*-
# Copyright: hcp.core contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The signed manifest of an enrollment entry (format ``hcp.core.manifest`` v2, docs/enrollment-db.md).

The enrollment pipeline builds it (``enrollment/pipeline.py``) and the DB writer stamps it with the
commit's ``generation`` under the DB lock (``stamp``); attestation clients and servers check it here,
without importing the pipeline or the asset generators.

v2 added ``generation``: the enrollment DB generation (commit count of the first-parent history of
``main``) of the commit that wrote the entry, so a client can refuse an older, validly signed entry
(a rolled-back DB). v1 manifests carry no generation: ``generation()`` reads them as 0.
"""

from __future__ import annotations

import hashlib
import json

from ansible_collections.hcp.core.plugins.module_utils import jsonutil, pki
from ansible_collections.hcp.core.plugins.module_utils.errors import HcpError

MANIFEST_FORMAT = "hcp.core.manifest"
MANIFEST_VERSION = 2
# Versions verify_entry accepts: v1 (no generation) stays readable; clients treat it as generation 0.
READ_VERSIONS = (1, 2)
MAX_GENERATION = 2 ** 62


def serialize(manifest):
    """The stored bytes of a manifest dict (what the signature covers)."""
    return (json.dumps(manifest, sort_keys=True, indent=1) + "\n").encode()


def check_generation(value):
    """``value`` when it is a valid generation (an int, not a bool, in 1..2**62); HcpError otherwise."""
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_GENERATION:
        raise HcpError("manifest generation must be an integer in 1..%d, got %r" % (MAX_GENERATION, value))
    return value


def generation(manifest):
    """The generation of a verified manifest dict: its ``generation`` (v2) or 0 (v1)."""
    if manifest.get("version") == 1:
        return 0
    return check_generation(manifest.get("generation"))


def stamp(files, signer, generation_value):
    """``files`` with ``manifest.json`` set to ``generation_value`` and signed again by ``signer``
    (the DB writer calls this under the DB lock, with the generation its commit gets).
    Returns {"manifest.json": bytes, "manifest.sig": bytes}."""
    try:
        manifest = jsonutil.loads(files["manifest.json"], what="the manifest to stamp")
    except (KeyError, TypeError, jsonutil.JsonInputError):
        raise HcpError("the entry has no manifest to stamp")
    if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT:
        raise HcpError("the entry's manifest is not an %s document" % MANIFEST_FORMAT)
    manifest["version"] = MANIFEST_VERSION
    manifest["generation"] = check_generation(generation_value)
    data = serialize(manifest)
    return {"manifest.json": data, "manifest.sig": signer.sign(data)}


def verify_entry(files, signer_public):
    """Check an entry's manifest signature and every file hash; returns the manifest.
    pki.SignatureError / HcpError on any mismatch (what an attestation client does).
    Accepts v1 (no generation) and v2 (a valid ``generation``)."""
    manifest_bytes = files.get("manifest.json")
    signature = files.get("manifest.sig")
    if manifest_bytes is None or signature is None:
        raise pki.SignatureError("entry has no signed manifest")
    pki.verify_signature(signer_public, manifest_bytes, signature)
    try:
        manifest = jsonutil.loads(manifest_bytes, what="the signed manifest")
    except jsonutil.JsonInputError as exc:
        raise HcpError(str(exc))
    if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT \
            or manifest.get("version") not in READ_VERSIONS or isinstance(manifest.get("version"), bool):
        raise HcpError("unsupported manifest format")
    generation(manifest)
    listed = manifest.get("files")
    if not isinstance(listed, dict):
        raise HcpError("the signed manifest lists no files")
    for name, digest in listed.items():
        if name not in files or hashlib.sha256(files[name]).hexdigest() != digest:
            raise pki.SignatureError("file %s does not match the signed manifest" % name)
    return manifest
