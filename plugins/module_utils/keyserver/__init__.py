# -*- coding: utf-8 -*-
# Copyright: hcp.core contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The key-server (issue 18, seed 003): resource names, the encrypted store, the ACL, the audit
log, the auth-challenge and the client. No Ansible imports. docs/keyserver.md."""
