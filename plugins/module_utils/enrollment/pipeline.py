# -*- coding: utf-8 -*-
# Copyright: hcp.core contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The enrollment pipeline (no Ansible imports): EK checks, profile merge, asset
generation, sealing of sensitive assets to the EK, and the signed manifest. It builds
the files of one DB entry in memory; ``store_entry`` stores them in one commit, signing the
manifest under the DB lock with the commit's generation, so a failure anywhere writes nothing.

Sensitive assets are sealed with ``profile.seal_policy``: the profile's explicit
``seal_policy``, else its golden PCR values (``attest.pcrs``), else none.
Manifest format "hcp.core.manifest" v2: docs/enrollment-db.md.
"""

from __future__ import annotations

import datetime
import hashlib
import json

from ansible_collections.hcp.core.plugins.module_utils.enrollment import asset_contract
from ansible_collections.hcp.core.plugins.module_utils.enrollment import manifest as manifest_mod
from ansible_collections.hcp.core.plugins.module_utils.enrollment import profile as enroll_profile
from ansible_collections.hcp.core.plugins.module_utils.tpm import envelope
# Importing the package registers every asset generator.
from ansible_collections.hcp.core.plugins.module_utils.enrollment import generators  # noqa: F401  pylint: disable=unused-import
from ansible_collections.hcp.core.plugins.module_utils.tpm.ek_trust import DEFAULT_MODE, EkTrust
from ansible_collections.hcp.core.plugins.module_utils.tpm.ekpub import load_ek_public
from ansible_collections.hcp.core.plugins.module_utils.errors import HcpError
from ansible_collections.hcp.core.plugins.module_utils.tpm.device import ekpubhash as compute_ekpubhash


class EnrollmentConfig(object):
    """Server side of an enrollment: profiles, issuer, signer, secrets, EK trust.

    ``ek_trust``: vendor_ca (default; needs ``vendor_cas``), allow_list (needs ``ek_allow_list``)
    or tofu (tpm/ek_trust.py); EkTrustConfigError here when it cannot work. ``kerberos``: the
    kadmin API side of the ``keytab`` generator (generators.keytab.HostPrincipals) or None."""

    def __init__(self, issuer, signer, preclient=None, postclient=None, realm=None, env=None,
                 secrets=None, vendor_cas=None, ek_trust=DEFAULT_MODE, ek_allow_list=None, reserved_names=(),
                 kerberos=None):
        self.issuer = issuer
        self.signer = signer
        self.preclient = preclient or {}
        self.postclient = postclient or {}
        self.realm = realm
        self.env = env or {}
        self.secrets = secrets or {}
        self.ek_trust = EkTrust(ek_trust, vendor_cas, ek_allow_list)
        self.vendor_cas = self.ek_trust.vendor_cas
        # the site's service client names, reserved like orchestrator/attest-* (pki.reserved_service_name)
        self.reserved_names = tuple(reserved_names or ())
        self.kerberos = kerberos

    def __repr__(self):
        return "EnrollmentConfig(realm=%r, %d secrets)" % (self.realm, len(self.secrets))


def check_ek(data, config, now=None):
    """The EK's TPM2B_PUBLIC from ``data`` (TPM2B/PEM/EK certificate), after the attribute
    checks and the trust decision of ``config.ek_trust`` (``tpm/ek_trust.py``). InvalidEkError."""
    return config.ek_trust.check_ek(data, now=now)


class PolicyRejectedError(HcpError):
    """The policy service rejected the enrollment, or could not be asked (fail closed)."""


def build_entry(config, ek_data, hostname, client_profile, now=None, operation="add", policy_check=None, caller=None,
                generation=None, before_generate=None):
    """Everything one entry holds: (ekpubhash, hostname, files {name: bytes}, summary).

    The manifest is signed only with a ``generation`` (the DB generation of the commit that
    stores it); without one, ``files`` holds the unsigned ``manifest.json`` and ``store_entry``
    stamps and signs it under the DB lock.

    ``policy_check(params)``: called with the hook payload (hostname, ekpubhash, operation,
    auth.client_cert = ``caller``, the merged profile, and ``__env`` at the top level) after
    the profile merge and before any asset is generated; it raises to refuse.
    ``before_generate(ekpubhash, hostname)``: called after the policy check, before the first
    generator runs (the service refuses there a TPM or hostname already enrolled, before the
    ``keytab`` generator changes anything in the realm).

    Generators with ``side_effects`` (``keytab``) run after all the others, in profile order.

    ``summary`` (safe to return/log): ekpubhash, hostname, assets [{name, sensitive}],
    profile (the effective profile without ``__env``)."""
    now = now or datetime.datetime.now(datetime.timezone.utc)
    hostname = enroll_profile.check_not_reserved(enroll_profile.check_hostname(hostname), config.reserved_names)
    client = enroll_profile.parse_profile(client_profile)
    # The attestation server reads the golden values from the stored client profile: a
    # malformed section is refused here (400), not at every attestation.
    enroll_profile.golden_pcrs(client)
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
    # stable: the others keep their order; those changing something outside the entry go last
    generators.sort(key=lambda g: bool(g.side_effects))
    if before_generate is not None:
        before_generate(ekhash, hostname)
    # Golden PCR values seal every sensitive asset to them unless seal_policy says otherwise.
    policy = enroll_profile.seal_policy(profile)
    ctx = asset_contract.GeneratorContext(
        hostname, ekhash, public.marshal(), profile, profile["__env"], config.issuer, config.secrets, now,
        operation=operation, kerberos=getattr(config, "kerberos", None),
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
        "format": manifest_mod.MANIFEST_FORMAT,
        "version": manifest_mod.MANIFEST_VERSION,
        "hostname": hostname,
        "ekpubhash": ekhash,
        "operation": operation,
        "created": now.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "seal_policy": policy,
        "assets": listing,
        "files": dict((n, hashlib.sha256(d).hexdigest()) for n, d in sorted(files.items())),
    }
    files["manifest.json"] = manifest_mod.serialize(manifest)
    if generation is not None:
        files.update(manifest_mod.stamp(files, config.signer, generation))
    view = dict((k, v) for k, v in profile.items() if k != "__env")
    summary = {"ekpubhash": ekhash, "hostname": hostname,
               "assets": [{"name": a["name"], "sensitive": a["sensitive"]} for a in listing], "profile": view}
    return ekhash, hostname, files, summary


def store_entry(db, config, ekpubhash, hostname, files, message=None, replace=False):
    """Store a built entry in ``db`` (enrollment.db.EnrollmentDb) in one commit: the manifest is
    stamped with that commit's generation and signed by ``config.signer`` under the DB lock.
    Returns the new commit id."""
    return db.add(ekpubhash, hostname, files, message=message, replace=replace,
                  finalize=lambda generation: manifest_mod.stamp(files, config.signer, generation))
