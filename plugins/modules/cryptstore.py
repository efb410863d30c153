#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: hcp.core contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: cryptstore
short_description: Keep keys, certificates and other secrets in the host's TPM-sealed cryptstore
version_added: 0.1.0
description:
  - Manages items in the host's I(cryptstore), a local directory (mode V(0700)) whose items are encrypted with
    AES-256-GCM under a master key sealed to the host's TPM (an hcp.core envelope to its EK). The store opens only on
    that TPM; on another one (TPM replaced) the module fails, says so and changes nothing. Format and threat model in
    C(docs/cryptstore.md).
  - O(state=present) stores O(data), O(data_b64), the bytes of O(src) or the key-server item O(from_keyserver) as item
    O(name) (created or replaced only when it differs), or, without data, reads the existing item into O(dest) and/or
    the result (O(return_content)).
  - O(state=absent) deletes item O(name).
  - O(state=exported) seals exportable items to ANOTHER host's TPM (its EK public key O(ekpub)) as a bundle written to
    O(bundle_path). Nothing leaves the host in clear, and only that TPM can open the bundle.
  - O(state=imported) opens such a bundle with this host's TPM and stores its items here.
  - Item data is never returned unless O(return_content=true); it is masked in every message.
  - Paths are walked without following symbolic links; the store, its directories and files must belong to the user
    running the module (root) and not be open to others.
author:
  - HCP maintainers (@hcp-core)
extends_documentation_fragment:
  - hcp.core.tpm.tcti
  - hcp.core.tpm
  - hcp.core.attributes
  - hcp.core.secret
attributes:
  check_mode:
    details: The TPM is used read-only (to unseal the store's key or a bundle); nothing is written.
  idempotent:
    details: An export is rewritten only when the items, the target or the bundle changed (checked with a key only this
      store holds).
options:
  path:
    description: The store's directory. It is created (mode V(0700)) by the first O(state=present) or O(state=imported)
      when O(create=true).
    type: path
    default: /var/lib/hcp/cryptstore
  state:
    description: What to do; see the description.
    type: str
    choices: [present, absent, exported, imported]
    default: present
  name:
    description:
      - The item's name, required for O(state=present) and O(state=absent).
      - 1 to 128 characters of V(A-Z a-z 0-9 . _ @ + -), starting with a letter or digit, without V(..).
    type: str
  names:
    description: The items O(state=exported) exports (each must be exportable). Default, every exportable item.
    type: list
    elements: str
  type:
    description:
      - The item's type. V(x509) must be an X.509 certificate (PEM or DER).
    type: str
    choices: [key, x509, binary-blob, other]
    default: other
  data:
    description: The item's data as text. At most one of O(data), O(data_b64), O(src) and O(from_keyserver).
    type: str
  data_b64:
    description: The item's data in base64 (for binary data).
    type: str
  src:
    description:
      - Path of a file, on the host, whose bytes are the item's data.
      - Read without following symbolic links; the directories on its path must belong to root or the user running
        the module and not be writable by everyone (as for O(ekpub_path) and O(bundle_path)).
    type: path
  from_keyserver:
    description:
      - Retrieve the item's data from the key-server (C(docs/keyserver.md)) with this host's key-server client
        certificate, answering its auth-challenge with the certificate's key (proof of possession), and store it as
        O(name). The key-server's ACL decides; a non-exportable key-server item is released only to a host whose
        certificate's measurement it names, and cannot be stored here with O(exportable=true).
      - The item is retrieved at every run, also in check mode (a retrieve changes nothing on the key-server), and
        written only when it differs. Its data is never returned nor logged.
    type: dict
    suboptions:
      url:
        description: The key-server's URL (V(https://) only).
        type: str
        required: true
      name:
        description: The key-server resource name, V(<domain>/<name>).
        type: str
        required: true
      version:
        description: The item version to retrieve; the latest when omitted.
        type: int
      ca_file:
        description: CA bundle verifying the key-server's TLS certificate (the site CA); the system trust store when
          omitted.
        type: path
      client_cert:
        description: The host's key-server client certificate (PEM), issued by the site's enrollment CA with the
          key-server client purpose.
        type: path
        default: /etc/hcp/https-client/https-client.pem
      client_key:
        description: Its private key (the attested C(https-client.key) by default; with O(from_keyserver.client_cert)
          set and no key, the key is read from that file).
        type: path
      timeout:
        description: Seconds per request.
        type: int
        default: 30
      credential_dir:
        description:
          - The directory where the host's attestation leaves its short-lived key-server credential
            (P(hcp.core.attestation_client#role) option C(attestation_client_keyserver_credential_dir); docs/keyserver.md,
            part 2). A valid credential there is used instead of O(from_keyserver.client_cert), since it names the measurement the
            host's quote proved, which items bound to measurements and the release policy need.
        type: path
  exportable:
    description:
      - Whether the item may be exported (O(state=exported)). Set when the item is stored; imported items get this
        value too.
    type: bool
    default: false
  dest:
    description: With O(state=present) and no data, write the item's data to this file (mode V(0600), atomically,
      without following links; only when it differs).
    type: path
  create:
    description: Create the store when O(path) holds none (O(state=present) with data, O(state=imported)).
    type: bool
    default: true
  ekpub:
    description:
      - The EK public key of the TPM O(state=exported) seals to, in any form M(hcp.core.tpm_seal) accepts.
      - Exactly one of O(ekpub) and O(ekpub_path) with O(state=exported).
    type: str
  ekpub_path:
    description: Path of a file holding that EK public key.
    type: path
  bundle_path:
    description:
      - O(state=exported), where to write the bundle (mode V(0600)); without it the bundle is returned (RV(bundle)).
      - O(state=imported), the bundle to import. Exactly one of O(bundle_path) and O(bundle).
    type: path
  bundle:
    description: The bundle to import (its JSON text), with O(state=imported).
    type: str
  force:
    description: With O(state=imported), replace items that exist here with other content (without it nothing is
      imported and the module fails, naming them).
    type: bool
    default: false
seealso:
  - module: hcp.core.tpm_info
  - module: hcp.core.tpm_seal
"""

EXAMPLES = r"""
- name: Keep the disk key in the cryptstore, exportable to the replacement host
  hcp.core.cryptstore:
    name: disk-key
    type: key
    src: /run/hcp/disk.key
    exportable: true

- name: Fetch the VHD key from the key-server with this host's attested certificate (seed 003, scenario 1)
  hcp.core.cryptstore:
    name: vhd-key
    type: key
    from_keyserver:
      url: https://keys.example.test:8448
      name: datica-test/vhd-key
      ca_file: /usr/local/share/ca-certificates/hcp-site.crt

- name: Read it back into a variable (the task's output is hidden)
  hcp.core.cryptstore:
    name: disk-key
    return_content: true
  register: disk_key  # disk_key.content_b64 (binary) or disk_key.content (text)

- name: Export it for the new host, sealed to that host's TPM
  hcp.core.cryptstore:
    state: exported
    names: [disk-key]
    ekpub: "{{ hostvars['new-host'].tpm.ekpub_tpm2b }}"
    bundle_path: /var/lib/hcp/export/new-host.bundle

- name: Import it on the new host
  hcp.core.cryptstore:
    state: imported
    bundle_path: /var/lib/hcp/import/new-host.bundle
"""

RETURN = r"""
path:
  description: The store's directory.
  returned: always
  type: str
ekpubhash:
  description: The EK hash of the TPM the store is sealed to.
  returned: when the store exists
  type: str
item:
  description: The item's metadata (never its data).
  returned: O(state=present), and O(state=absent) when the item existed
  type: dict
  sample: {"name": "disk-key", "type": "key", "exportable": true, "created": 1764670000, "updated": 1764670000, "size": 64}
keyserver:
  description: With O(from_keyserver), the key-server item's metadata (never its data).
  returned: O(state=present) with O(from_keyserver)
  type: dict
  sample: {"name": "datica-test/vhd-key", "item_version": 2, "created": "2026-12-02T13:00:00Z", "exportable": true}
action:
  description: What happened to the item (V(created), V(updated), V(unchanged), V(deleted), V(absent), V(read)).
  returned: O(state=present) and O(state=absent)
  type: str
items:
  description: Metadata of every item in the store.
  returned: when the store exists
  type: list
  elements: dict
exported:
  description: The names of the exported items.
  returned: O(state=exported)
  type: list
  elements: str
target_ekpubhash:
  description: The EK hash of the TPM the bundle is sealed to.
  returned: O(state=exported)
  type: str
bundle:
  description: The bundle (JSON text; not secret, only the target TPM opens it).
  returned: O(state=exported) without O(bundle_path)
  type: str
imported:
  description: Per imported item, V(created), V(updated) or V(unchanged).
  returned: O(state=imported)
  type: dict
source:
  description: The exporting store's id and EK hash as the bundle states them (not proof of origin).
  returned: O(state=imported)
  type: dict
content:
  description: The item's data, when it is UTF-8 text. Secret; the result holding it is hidden from the output.
  returned: O(state=present) with O(return_content=true)
  type: str
content_b64:
  description: The item's data in base64, when it is not UTF-8. Secret; the result holding it is hidden from the output.
  returned: O(state=present) with O(return_content=true)
  type: str
"""

import base64
import binascii
import hmac

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.hcp.core.plugins.module_utils import fileutil
from ansible_collections.hcp.core.plugins.module_utils.cryptstore import bundle as bundle_mod
from ansible_collections.hcp.core.plugins.module_utils.cryptstore import keyserver_source
from ansible_collections.hcp.core.plugins.module_utils.cryptstore.store import MAX_ITEM_BYTES, CryptStore, store_exists, validate_item
from ansible_collections.hcp.core.plugins.module_utils.errors import HcpError
from ansible_collections.hcp.core.plugins.module_utils.module_helpers import (
    RETURN_CONTENT_ARGUMENT_SPEC,
    TPM_ARGUMENT_SPEC,
    argument_spec,
    fail_on_hcp_error,
    mask_secret,
    unmask_secret,
)
from ansible_collections.hcp.core.plugins.module_utils.tpm.device import Tpm


def _read(module, path, what, limit):
    """The bytes of ``path``, read without following links (a root process must not read a
    path a user can change: see fileutil.read_nofollow)."""
    try:
        info, data = fileutil.read_nofollow(path, limit)
    except OSError as exc:
        module.fail_json(msg="cannot read %s %s: %s" % (what, path, exc.strerror or exc))
    if info is None:
        module.fail_json(msg="cannot read %s %s: no such file" % (what, path))
    if data is None:
        module.fail_json(msg="%s %s is larger than %d bytes" % (what, path, limit))
    return data


def _data(module, result):
    params = module.params
    if params["from_keyserver"] is not None:
        data, meta = keyserver_source.fetch(params["from_keyserver"], exportable=params["exportable"])
        mask_secret(module, data)
        result["keyserver"] = meta
        return data
    if params["data"] is not None:
        return params["data"].encode("utf-8")
    if params["data_b64"] is not None:
        try:
            return base64.b64decode(params["data_b64"], validate=True)
        except (binascii.Error, ValueError):
            module.fail_json(msg="data_b64 is not valid base64")
    if params["src"] is not None:
        data = _read(module, params["src"], "src", MAX_ITEM_BYTES)
        mask_secret(module, data)
        return data
    return None


def _present(module, tpm, result):
    params = module.params
    data = _data(module, result)
    name = params["name"]
    if data is None:
        if not params["return_content"] and not params["dest"]:
            module.fail_json(msg="state=present without data, data_b64 or src reads the item: set dest or return_content=true")
        store = CryptStore.open(params["path"], tpm)
        item = store.get(name)
        mask_secret(module, item.data)
        result.update(item=item.info(), action="read")
        if params["dest"]:
            _info, current = fileutil.read_nofollow(params["dest"], MAX_ITEM_BYTES)
            mask_secret(module, current)
            if current is None or not hmac.compare_digest(current, item.data):
                result["changed"] = True
                if not module.check_mode:
                    fileutil.safe_install(params["dest"], item.data, 0o600)
            result["dest"] = params["dest"]
        if params["return_content"]:
            try:
                result["content"] = item.data.decode("utf-8")
            except UnicodeDecodeError:
                result["content_b64"] = base64.b64encode(item.data).decode("ascii")
        return store
    validate_item(name, params["type"], data)
    if module.check_mode and not store_exists(params["path"]):
        if not params["create"]:
            CryptStore.open(params["path"], tpm)  # the clear "no cryptstore" error
        result.update(changed=True, action="created")
        return None
    store = CryptStore.open(params["path"], tpm, create=params["create"] and not module.check_mode)
    result["action"] = store.put(name, data, params["type"], params["exportable"], dry_run=module.check_mode)
    result["changed"] = result["action"] != "unchanged"
    if not module.check_mode:
        result["item"] = store.get(name).info()
    return store


def _absent(module, tpm, result):
    params = module.params
    store = CryptStore.open(params["path"], tpm)
    try:
        result["item"] = store.get(params["name"]).info()
    except HcpError as exc:
        if getattr(exc, "status", None) != 404:
            raise
    result["changed"] = store.delete(params["name"], dry_run=module.check_mode)
    result["action"] = "deleted" if result["changed"] else "absent"
    return store


def _exported(module, tpm, result):
    params = module.params
    if bool(params["ekpub"]) == bool(params["ekpub_path"]):
        module.fail_json(msg="state=exported needs exactly one of ekpub and ekpub_path (the target TPM's EK)")
    ekpub = params["ekpub"] or _read(module, params["ekpub_path"], "ekpub_path", 64 * 1024)
    store = CryptStore.open(params["path"], tpm)
    names = params["names"]
    path = params["bundle_path"]
    if path:
        _info, existing = fileutil.read_nofollow(path, bundle_mod.MAX_BUNDLE_BYTES)
        current = bundle_mod.current_export(store, existing, ekpub, names) if existing is not None else None
        if current is not None:
            result.update(exported=current, target_ekpubhash=bundle_mod.loads(existing)["ekpubhash"], bundle_path=path)
            return store
    bundle, exported = bundle_mod.export_bundle(store, ekpub, names)
    result.update(exported=exported, target_ekpubhash=bundle["ekpubhash"])
    if path:
        result.update(bundle_path=path, changed=True)
        if not module.check_mode:
            fileutil.safe_install(path, bundle_mod.dumps(bundle), 0o600)
    else:
        result["bundle"] = bundle_mod.dumps(bundle).decode("utf-8")
    return store


def _imported(module, tpm, result):
    params = module.params
    if bool(params["bundle"]) == bool(params["bundle_path"]):
        module.fail_json(msg="state=imported needs exactly one of bundle and bundle_path")
    raw = params["bundle"] if params["bundle"] else _read(module, params["bundle_path"], "bundle_path", bundle_mod.MAX_BUNDLE_BYTES)
    source, items = bundle_mod.open_bundle(tpm, raw)
    for _name, _kind, data in items:
        mask_secret(module, data)
    result["source"] = source
    if module.check_mode and not store_exists(params["path"]):
        if not params["create"]:
            CryptStore.open(params["path"], tpm)
        result.update(changed=True, imported=dict((name, "created") for name, _kind, _data in items))
        return None
    store = CryptStore.open(params["path"], tpm, create=params["create"] and not module.check_mode)
    result["imported"] = store.put_many(items, exportable=params["exportable"], force=params["force"], dry_run=module.check_mode)
    result["changed"] = any(action != "unchanged" for action in result["imported"].values())
    return store


def main():
    module = AnsibleModule(
        argument_spec=argument_spec(
            TPM_ARGUMENT_SPEC,
            RETURN_CONTENT_ARGUMENT_SPEC,
            path=dict(type="path", default="/var/lib/hcp/cryptstore"),
            state=dict(type="str", default="present", choices=["present", "absent", "exported", "imported"]),
            name=dict(type="str"),
            names=dict(type="list", elements="str"),
            type=dict(type="str", default="other", choices=["key", "x509", "binary-blob", "other"]),
            data=dict(type="str", no_log=True),
            data_b64=dict(type="str", no_log=True),
            from_keyserver=dict(type="dict", options=dict(
                url=dict(type="str", required=True),
                name=dict(type="str", required=True),
                version=dict(type="int"),
                ca_file=dict(type="path"),
                client_cert=dict(type="path", default=keyserver_source.DEFAULT_CLIENT_CERT),
                client_key=dict(type="path", no_log=False),
                timeout=dict(type="int", default=30),
                credential_dir=dict(type="path"),
            )),
            src=dict(type="path"),
            exportable=dict(type="bool", default=False),
            dest=dict(type="path"),
            create=dict(type="bool", default=True),
            ekpub=dict(type="str"),
            ekpub_path=dict(type="path"),
            bundle_path=dict(type="path"),
            bundle=dict(type="str"),
            force=dict(type="bool", default=False),
        ),
        mutually_exclusive=[("data", "data_b64", "src", "from_keyserver"), ("bundle", "bundle_path")],
        required_if=[("state", "present", ("name",)), ("state", "absent", ("name",))],
        supports_check_mode=True,
    )
    params = module.params
    result = dict(changed=False, path=params["path"])
    handlers = {"present": _present, "absent": _absent, "exported": _exported, "imported": _imported}
    try:
        if params["state"] == "absent" and not store_exists(params["path"]):
            module.exit_json(action="absent", **result)  # nothing to delete: no TPM needed
        with Tpm(params["tcti"], ek_type=params["ek_type"]) as tpm:
            store = handlers[params["state"]](module, tpm, result)
            if store is not None:
                result.update(ekpubhash=store.ekpubhash, items=store.list())
    except (HcpError, ValueError) as exc:
        fail_on_hcp_error(module, exc)
    except OSError as exc:
        module.fail_json(msg="cryptstore %s: %s" % (params["path"], exc.strerror or exc))
    if params["return_content"]:
        # asked for: released from the mask; the action plugin hides this result from the output
        unmask_secret(module, *[result[key] for key in ("content", "content_b64") if key in result])
    module.exit_json(**result)


if __name__ == "__main__":
    main()
