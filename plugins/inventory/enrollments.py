# -*- coding: utf-8 -*-
# Copyright: hcp.core contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Ansible inventory face of enrollment/fleet.py: the enrolled fleet as hosts and groups."""

from __future__ import annotations

DOCUMENTATION = r"""
---
name: enrollments
short_description: The hosts enrolled at an hcp.core enrollment service, grouped by attestation state
description:
  - Reads the enrolled hosts from the enrollment DB (a local copy of the bare git repository, read-only,
    one commit) or from the enrollment service's API over HTTPS with a service-client certificate.
  - Optionally reads attestation status documents (format C(hcp.core.attest.status) v1, docs/fleet.md) from
    files or HTTPS URLs and groups the hosts by their attestation state.
  - "Groups: C(attested) (latest result ok and a success within O(stale_after)), C(stale) (no success within
    O(stale_after), never attested included), C(failed) (the latest attempt's result is not ok) and
    C(unenrolled_in_inventory) (enrolled, but not a host of the reference inventory: the hosts the
    reconciliation of C(playbooks/enroll.yml) would unenroll)."
  - Without O(attestation_status) the groups C(attested), C(stale) and C(failed) stay empty and every host's
    C(hcp_attestation.state) is V(unknown); without O(reference_hosts) or O(reference_inventory)
    C(unenrolled_in_inventory) stays empty.
  - "Host variables: C(hcp_ekpubhash); C(hcp_enrollment) (C(hostname), C(ekpubhash), C(profile): the
    O(profile_fields) of the client profile, C(manifest): generation, operation, created and seal_policy of the
    entry's manifest, DB source only); C(hcp_attestation) (C(state), C(last_success), C(last_result), C(reason),
    C(age) in seconds). Never an asset, a sealed envelope, a key or a secret's name."
  - The configuration file's name must end with C(enrollments.yml) or C(enrollments.yaml).
author: HCP maintainers (@hcp-core)
version_added: 0.1.0
extends_documentation_fragment:
  - constructed
  - inventory_cache
  - hcp.core.service_client
options:
  plugin:
    description: The name of this plugin.
    type: str
    required: true
    choices: [hcp.core.enrollments]
  db_path:
    description:
      - Path of the enrollment DB (bare git repository, docs/enrollment-db.md), read without its lock at the
        head of its branch. Exactly one of O(db_path) and O(url) is required.
    type: path
  url:
    description:
      - Base URL of the enrollment service (V(https://) only), queried with GET /v1/query with the
        service-client certificate O(client_cert). Exactly one of O(db_path) and O(url) is required.
    type: str
    required: false
  attestation_status:
    description:
      - Attestation status documents (C(hcp.core.attest.status) v1), each a local file path or an V(https://)
        URL fetched with O(ca_file), O(client_cert) and O(client_key). Several are merged (latest success,
        result of the latest attempt).
    type: list
    elements: str
    default: []
  stale_after:
    description: Period without a successful attestation after which a host is C(stale), in seconds or as V(<n>s|m|h|d|w).
    type: str
    default: 1d
  reference_hosts:
    description: Hostnames of the reference inventory for the group C(unenrolled_in_inventory).
    type: list
    elements: str
  reference_inventory:
    description:
      - An inventory source (file or directory, any enabled inventory plugin but this one) whose group
        O(reference_group) is the reference inventory, added to O(reference_hosts). The host's
        C(enroll_hostname) variable is used when set, else its inventory name (as C(playbooks/enroll.yml) does).
    type: path
  reference_group:
    description: The group of O(reference_inventory) that lists the fleet.
    type: str
    default: tpm_hosts
  profile_fields:
    description: Client profile members copied into C(hcp_enrollment.profile); members that could name secrets are refused.
    type: list
    elements: str
    choices: [assets, certificates, ssh_host_keys, reenroll, seal_policy, attest]
    default: [assets, reenroll, seal_policy]
"""

EXAMPLES = r"""
# fleet.enrollments.yml: the enrolled fleet from a local copy of the DB, grouped by attestation state
plugin: hcp.core.enrollments
db_path: /var/lib/hcp/enrolldb/db
attestation_status:
  - /var/lib/hcp/attest/status.json
  - https://attest2.example.test:8443/v1/status
ca_file: /etc/hcp/enroll/ca.pem
client_cert: /etc/hcp/enroll/pki/client-orchestrator.pem
client_key: /etc/hcp/enroll/pki/client-orchestrator.key
stale_after: 6h
reference_inventory: inventories/site/hosts.yml
reference_group: tpm_hosts
cache: true
cache_plugin: ansible.builtin.jsonfile
cache_connection: ~/.cache/hcp-enrollments
keyed_groups:
  - key: hcp_attestation.state
    prefix: attestation

# From the enrollment API with the orchestrator's service-client certificate:
# plugin: hcp.core.enrollments
# url: https://enroll.example.test:8443
# ca_file: /etc/hcp/enroll/ca.pem
# client_cert: /etc/hcp/enroll/pki/client-orchestrator.pem
# client_key: /etc/hcp/enroll/pki/client-orchestrator.key

# ansible-inventory -i fleet.enrollments.yml --graph stale
"""

import os
import time

from ansible.errors import AnsibleParserError
from ansible.plugins.inventory import BaseInventoryPlugin, Cacheable, Constructable

from ansible_collections.hcp.core.plugins.module_utils.enrollment import fleet
from ansible_collections.hcp.core.plugins.module_utils.errors import HcpError

GROUPS = ("attested", "stale", "failed", "unenrolled_in_inventory")


class InventoryModule(BaseInventoryPlugin, Constructable, Cacheable):
    """hcp.core.enrollments inventory plugin."""

    NAME = "hcp.core.enrollments"

    def verify_file(self, path):
        return super(InventoryModule, self).verify_file(path) and path.endswith(("enrollments.yml", "enrollments.yaml"))

    def _fetch(self):
        """What the cache holds: the entries (public fields) and the parsed status documents."""
        fields = self.get_option("profile_fields")
        db_path, url = self.get_option("db_path"), self.get_option("url")
        if bool(db_path) == bool(url):
            raise AnsibleParserError("%s: set exactly one of db_path and url" % self.NAME)
        creds = dict((k, self.get_option(k)) for k in ("ca_file", "client_cert", "client_key", "timeout"))
        try:
            if db_path:
                data = fleet.read_db(db_path, fields)
            else:
                # imported here: a DB source needs no HTTP library
                from ansible_collections.hcp.core.plugins.module_utils.enrollment.client import EnrollmentClient  # pylint: disable=import-outside-toplevel
                data = fleet.read_api(EnrollmentClient(url, **creds), fields)
            data["status"] = [fleet.read_status(source, **creds) for source in self.get_option("attestation_status")]
        except HcpError as exc:
            raise AnsibleParserError("%s: %s" % (self.NAME, exc)) from exc
        return data

    def _reference(self, path):
        """Hostnames of the reference inventory, or None when none is configured."""
        hosts = self.get_option("reference_hosts")
        source = self.get_option("reference_inventory")
        if hosts is None and not source:
            return None
        names = list(hosts or [])
        if source:
            if os.path.realpath(source) == os.path.realpath(path):
                raise AnsibleParserError("%s: reference_inventory may not be this configuration" % self.NAME)
            # imported here: only a configuration with a reference inventory needs a second manager
            from ansible.inventory.manager import InventoryManager  # pylint: disable=import-outside-toplevel
            manager = InventoryManager(loader=self.loader, sources=[source])
            group = manager.groups.get(self.get_option("reference_group"))
            if group is None:
                raise AnsibleParserError("%s: reference_inventory %s has no group %s" % (self.NAME, source, self.get_option("reference_group")))
            for host in group.get_hosts():
                names.append(host.vars.get("enroll_hostname") or host.name)
        return names

    def parse(self, inventory, loader, path, cache=True):
        super(InventoryModule, self).parse(inventory, loader, path, cache)
        self._read_config_data(path)
        cache_key = self.get_cache_key(path)
        use_cache = self.get_option("cache") and cache
        update_cache = self.get_option("cache") and not cache
        data = None
        if use_cache:
            try:
                data = self._cache[cache_key]
            except KeyError:
                update_cache = True
        if data is None:
            data = self._fetch()
        if update_cache:
            self._cache[cache_key] = data
        try:
            stale_after = fleet.parse_duration(self.get_option("stale_after"))
        except HcpError as exc:
            raise AnsibleParserError("%s: stale_after: %s" % (self.NAME, exc)) from exc
        status = fleet.merge_status(data["status"]) if self.get_option("attestation_status") else None
        hosts = fleet.classify(data["entries"], status, time.time(), stale_after, self._reference(path))
        self._populate(hosts)

    def _populate(self, hosts):
        for group in GROUPS:
            self.inventory.add_group(group)
        strict = self.get_option("strict")
        for name, host in sorted(hosts.items()):
            self.inventory.add_host(name)
            for key, value in host["vars"].items():
                self.inventory.set_variable(name, key, value)
            for group in host["groups"]:
                self.inventory.add_child(group, name)
            hostvars = self.inventory.get_host(name).get_vars()
            self._set_composite_vars(self.get_option("compose"), hostvars, name, strict=strict)
            self._add_host_to_composed_groups(self.get_option("groups"), hostvars, name, strict=strict)
            self._add_host_to_keyed_groups(self.get_option("keyed_groups"), hostvars, name, strict=strict)
