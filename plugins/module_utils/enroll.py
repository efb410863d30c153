# -*- coding: utf-8 -*-
# Copyright: hcp.core contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The enrollment pipeline (no Ansible imports): EK checks, profile merge, asset
generation, sealing of sensitive assets to the EK, and the signed manifest. It builds
the files of one DB entry in memory; enroll_db stores them in one commit, so a failure
anywhere here writes nothing.

Manifest format "hcp.core.manifest" v1: docs/enrollment-db.md.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os

from ansible_collections.hcp.core.plugins.module_utils import asset_contract, enroll_profile, envelope, pki
# Importing the package registers every asset generator.
from ansible_collections.hcp.core.plugins.module_utils import generators  # noqa: F401  pylint: disable=unused-import
from ansible_collections.hcp.core.plugins.module_utils.ekpub import load_ek_public
from ansible_collections.hcp.core.plugins.module_utils.errors import HcpError, InvalidEkError
from ansible_collections.hcp.core.plugins.module_utils.tpm import ekpubhash as compute_ekpubhash

MANIFEST_FORMAT = "hcp.core.manifest"
MANIFEST_VERSION = 1
MAX_EK_BYTES = 16 * 1024


class EnrollmentConfig(object):
    """Server side of an enrollment: profiles, issuer, signer, secrets, EK trust."""

    def __init__(self, issuer, signer, preclient=None, postclient=None, realm=None, env=None,
                 secrets=None, vendor_cas=None, require_ek_cert=False):
        self.issuer = issuer
        self.signer = signer
        self.preclient = preclient or {}
        self.postclient = postclient or {}
        self.realm = realm
        self.env = env or {}
        self.secrets = secrets or {}
        self.vendor_cas = list(vendor_cas or [])
        self.require_ek_cert = require_ek_cert

    def __repr__(self):
        return "EnrollmentConfig(realm=%r, %d secrets)" % (self.realm, len(self.secrets))


def load_vendor_cas(directory):
    """Every certificate (PEM or DER, one or more per file) in ``directory``."""
    cas = []
    for name in sorted(os.listdir(directory)):
        path = os.path.join(directory, name)
        if os.path.isfile(path):
            with open(path, "rb") as handle:
                data = handle.read()
            cert = _certificate(data)
            if cert is not None:
                cas.extend(pki.load_certificates(data) if b"-----BEGIN CERTIFICATE" in data else [cert])
    return cas


def _certificate(data):
    """An x509 certificate when ``data`` is one (PEM or DER), else None."""
    pki.require_cryptography()
    from cryptography import x509  # pylint: disable=import-outside-toplevel  # guarded by require_cryptography

    try:
        if b"-----BEGIN CERTIFICATE" in data:
            return x509.load_pem_x509_certificate(data)
        if data[:1] == b"\x30":
            return x509.load_der_x509_certificate(data)
    except ValueError:
        return None
    return None


def check_ek(data, config, now=None):
    """The EK's TPM2B_PUBLIC from ``data`` (TPM2B/PEM/EK certificate), after the attribute
    checks and, when vendor CAs are configured, the EK certificate check. InvalidEkError."""
    if isinstance(data, str):
        data = data.encode("utf-8")
    if not data or len(data) > MAX_EK_BYTES:
        raise InvalidEkError("the EK is empty or larger than %d bytes" % MAX_EK_BYTES)
    cert = _certificate(data)
    if cert is None and config.require_ek_cert:
        raise InvalidEkError("an EK certificate is required (got a bare public key)")
    if cert is not None and config.vendor_cas:
        try:
            pki.verify_chain(cert, config.vendor_cas, config.vendor_cas, now=now)
        except HcpError as exc:
            raise InvalidEkError("EK certificate not trusted: %s" % exc)
    elif cert is not None and config.require_ek_cert:
        raise InvalidEkError("an EK certificate is required but no vendor CA is configured")
    return load_ek_public(data)


class PolicyRejectedError(HcpError):
    """The policy service rejected the enrollment, or could not be asked (fail closed)."""


def build_entry(config, ek_data, hostname, client_profile, now=None, operation="add", policy_check=None, caller=None):
    """Everything one entry holds: (ekpubhash, hostname, files {name: bytes}, summary).

    ``policy_check(params)``: called with the hook payload (hostname, ekpubhash, operation,
    auth.client_cert = ``caller``, the merged profile, and ``__env`` at the top level) after
    the profile merge and before any asset is generated; it raises to refuse.

    ``summary`` (safe to return/log): ekpubhash, hostname, assets [{name, sensitive}],
    profile (the effective profile without ``__env``)."""
    now = now or datetime.datetime.now(datetime.timezone.utc)
    hostname = enroll_profile.check_hostname(hostname)
    client = enroll_profile.parse_profile(client_profile)
    # A re-enrollment rebuilds from the stored EK, whose certificate was checked at add time.
    public = load_ek_public(ek_data) if operation == "reenroll" else check_ek(ek_data, config, now=now)
    ekhash = compute_ekpubhash(public)
    profile = enroll_profile.effective_profile(
        client, hostname, ekhash, config.preclient, config.postclient, realm=config.realm, extra_env=config.env
    )
    if policy_check is not None:
        view = dict((k, v) for k, v in profile.items() if k != "__env")
        policy_check({"hostname": hostname, "ekpubhash": ekhash, "operation": operation,
                      "auth": {"client_cert": caller}, "profile": view, "__env": profile["__env"]})
    names = profile.get("assets", [])
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names) or len(set(names)) != len(names):
        raise enroll_profile.ProfileError("profile 'assets' must be a list of distinct generator names")
    generators = [asset_contract.get_generator(n) for n in names]
    policy = profile.get("seal_policy")
    ctx = asset_contract.GeneratorContext(
        hostname, ekhash, public.marshal(), profile, profile["__env"], config.issuer, config.secrets, now
    )
    files = {
        "ek.pub": public.marshal(),
        "clientprofile": (json.dumps(client, sort_keys=True, indent=1) + "\n").encode(),
    }
    listing = []
    for generator in generators:
        for asset in generator.generate(ctx):
            stored = asset.name + ".sealed" if asset.sensitive else asset.name
            if stored in files:
                raise asset_contract.GeneratorError("asset %s produced twice (generator %s)" % (asset.name, generator.name))
            files[stored] = envelope.dumps(envelope.seal(public, asset.data, policy=policy, fingerprint=False)) if asset.sensitive else asset.data
            listing.append({"name": asset.name, "file": stored, "sensitive": asset.sensitive, "install": asset.install,
                            "generator": generator.name})
    manifest = {
        "format": MANIFEST_FORMAT,
        "version": MANIFEST_VERSION,
        "hostname": hostname,
        "ekpubhash": ekhash,
        "operation": operation,
        "created": now.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "seal_policy": policy,
        "assets": listing,
        "files": dict((n, hashlib.sha256(d).hexdigest()) for n, d in sorted(files.items())),
    }
    manifest_bytes = (json.dumps(manifest, sort_keys=True, indent=1) + "\n").encode()
    files["manifest.json"] = manifest_bytes
    files["manifest.sig"] = config.signer.sign(manifest_bytes)
    view = dict((k, v) for k, v in profile.items() if k != "__env")
    summary = {"ekpubhash": ekhash, "hostname": hostname,
               "assets": [{"name": a["name"], "sensitive": a["sensitive"]} for a in listing], "profile": view}
    return ekhash, hostname, files, summary


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
