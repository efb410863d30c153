# -*- coding: utf-8 -*-
# Copyright: hcp.core contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Per-application identity on a host (issue 19, seed 001): wire protocol, trust, identity
provider, security service, client library. Plain Python, no Ansible imports (docs/identity.md)."""
