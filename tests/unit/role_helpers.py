# -*- coding: utf-8 -*-
# Copyright: hcp.core contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Role templates rendered by Ansible's own engine in unit tests (controller context only:
helpers.py is also imported where ansible is not)."""
from __future__ import annotations

import os

import yaml
from ansible.parsing.dataloader import DataLoader
from ansible.template import Templar, trust_as_template


def _trusted(value):
    if isinstance(value, str):
        return trust_as_template(value)
    if isinstance(value, list):
        return [_trusted(v) for v in value]
    if isinstance(value, dict):
        return dict((k, _trusted(v)) for k, v in value.items())
    return value


def role_templar(role_dir, **overrides):
    """An Ansible Templar with a role's defaults and vars (as a play would see them, trusted as
    templates) plus ``overrides``: role templates rendered by the real engine in unit tests."""
    variables = {}
    for name in ("defaults/main.yml", "vars/main.yml"):
        with open(os.path.join(role_dir, name), "r", encoding="utf-8") as handle:
            variables.update(_trusted(yaml.safe_load(handle)))
    variables.update(inventory_hostname="localhost", ansible_managed="Ansible managed", ansible_check_mode=False)
    variables.update(overrides)
    return Templar(loader=DataLoader(), variables=variables)
