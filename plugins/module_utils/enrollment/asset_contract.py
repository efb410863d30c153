# -*- coding: utf-8 -*-
# Copyright: hcp.core contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The contract between the enrollment pipeline and its asset generators (no Ansible imports).

A generator is a small class with a ``name`` (what profiles list under ``assets``) and a
``generate(ctx)`` method returning :class:`Asset` objects. The pipeline seals every
sensitive asset to the host's EK, signs everything through the manifest, and stores the
results in the enrollment DB entry. Generators never write files and never seal: they
only produce bytes, so a failing generator cannot leave anything half-written.
"""

from __future__ import annotations

import dataclasses
import re

from ansible_collections.hcp.core.plugins.module_utils.errors import HcpError

ASSET_NAME_RE = re.compile(r"\A[a-z0-9][a-z0-9._-]{0,99}\Z")
# Names the pipeline itself writes into an entry: generators may not produce them.
RESERVED_NAMES = frozenset(
    ["ek.pub", "ekpubhash", "hostname", "clientprofile", "profile.json", "manifest.json", "manifest.sig", "entry.json"]
)


class GeneratorError(HcpError):
    """A generator cannot produce its assets from the profile it was given (bad input).

    The message names the generator and the offending profile key; it never contains
    secret material."""


class Asset(object):
    """One output file of a generator.

    ``name``: file name in the entry (``ASSET_NAME_RE``); sensitive assets are stored sealed
    as ``<name>.sealed``. ``data``: bytes. ``sensitive``: seal to the EK (private keys,
    secrets) or store in clear (certificates, configs). ``install``: optional hints for the
    attestation client, e.g. ``{"category": "https", "dest": "/etc/hcp/https/server.pem",
    "mode": "0644", "owner": "root"}``; recorded in the manifest, never interpreted here.
    """

    __slots__ = ("name", "data", "sensitive", "install")

    def __init__(self, name, data, sensitive, install=None):
        if not isinstance(name, str) or not ASSET_NAME_RE.fullmatch(name) or name in RESERVED_NAMES:
            raise GeneratorError("invalid asset name %r" % (name,))
        if name.endswith(".sealed"):
            raise GeneratorError("asset name %r may not end in .sealed" % (name,))
        if isinstance(data, str):
            data = data.encode("utf-8")
        if not isinstance(data, bytes):
            raise GeneratorError("asset %s: data must be bytes" % name)
        self.name = name
        self.data = data
        self.sensitive = bool(sensitive)
        self.install = dict(install or {})

    def __repr__(self):
        # Never the data: it may be a secret.
        return "Asset(%r, %d bytes, sensitive=%r)" % (self.name, len(self.data), self.sensitive)


# repr=False: the default repr would print the secrets; eq=False: contexts compare by identity.
@dataclasses.dataclass(repr=False, eq=False, slots=True)
class GeneratorContext(object):
    """What a generator may read.

    ``hostname``: validated FQDN or short name. ``ekpubhash``: 64 hex. ``ek_public``:
    TPM2B_PUBLIC bytes. ``profile``: the merged, ``{VAR}``-expanded profile (a dict; each
    generator reads its own key, see docs/enrollment-assets.md). ``env``: the ``__env`` variables
    (ENROLL_HOSTNAME, ENROLL_DOMAIN, ENROLL_ID, ENROLL_REALM, ...). ``issuer``: a
    ``pki.Issuer`` (enrollment CA key + certificate chain) or None. ``secrets``: operator
    secrets available to this enrollment, name -> bytes. ``now``: aware UTC datetime of
    the enrollment (all validity periods start here, so tests can pin time). ``operation``:
    ``add`` or ``reenroll``. ``kerberos``: the enrollment service's side of the kadmin API
    (``generators.keytab.HostPrincipals``) or None when the service has no ``kerberos``
    configuration.
    """

    hostname: str
    ekpubhash: str
    ek_public: bytes
    profile: dict
    env: dict
    issuer: object
    secrets: dict
    now: object
    operation: str = "add"
    kerberos: object = None


class AssetGenerator(object):
    """Base class: subclasses set ``name`` and implement ``generate``.

    ``side_effects``: True for a generator that changes something outside the entry (the
    ``keytab`` generator creates and re-keys principals through the kadmin API). The pipeline
    runs such generators after every other one, so a profile error elsewhere changes nothing."""

    name = None
    side_effects = False

    def generate(self, ctx):  # pragma: no cover - interface
        """Return a list of :class:`Asset` for ``ctx``; raise GeneratorError on bad input."""
        raise NotImplementedError


REGISTRY = {}


def register(cls):
    """Class decorator adding a generator to the registry under ``cls.name``."""
    if not cls.name or cls.name in REGISTRY:
        raise ValueError("generator name missing or duplicated: %r" % (cls.name,))
    REGISTRY[cls.name] = cls
    return cls


def get_generator(name):
    """The generator instance for ``name``; GeneratorError for an unknown name."""
    try:
        return REGISTRY[name]()
    except KeyError:
        raise GeneratorError("unknown asset generator %r (known: %s)" % (name, ", ".join(sorted(REGISTRY))))
