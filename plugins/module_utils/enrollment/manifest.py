# -*- coding: utf-8 -*-
# Copyright: hcp.core contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The signed manifest of an enrollment entry (format ``hcp.core.manifest`` v1, docs/enrollment-db.md).

The enrollment pipeline writes it (``enrollment/pipeline.py``); attestation clients and servers
check it here, without importing the pipeline or the asset generators.
"""

from __future__ import annotations

import hashlib
import json

from ansible_collections.hcp.core.plugins.module_utils import pki
from ansible_collections.hcp.core.plugins.module_utils.errors import HcpError

MANIFEST_FORMAT = "hcp.core.manifest"
MANIFEST_VERSION = 1


def verify_entry(files, signer_public):
    """Check an entry's manifest signature and every file hash; returns the manifest.
    pki.SignatureError / HcpError on any mismatch (what an attestation client does)."""
    manifest_bytes = files.get("manifest.json")
    signature = files.get("manifest.sig")
    if manifest_bytes is None or signature is None:
        raise pki.SignatureError("entry has no signed manifest")
    pki.verify_signature(signer_public, manifest_bytes, signature)
    manifest = json.loads(manifest_bytes)
    if manifest.get("format") != MANIFEST_FORMAT or manifest.get("version") != MANIFEST_VERSION:
        raise HcpError("unsupported manifest format")
    for name, digest in manifest["files"].items():
        if name not in files or hashlib.sha256(files[name]).hexdigest() != digest:
            raise pki.SignatureError("file %s does not match the signed manifest" % name)
    return manifest
