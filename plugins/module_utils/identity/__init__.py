# -*- coding: utf-8 -*-
# Copyright: hcp.core contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Per-application identity on a host (issue 19, seed 001): wire protocol, trust relationships,
identity provider, security service, client library and the systemd orchestrator adapter.
No Ansible imports. docs/identity.md."""
