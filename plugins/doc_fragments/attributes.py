# -*- coding: utf-8 -*-
# Copyright: hcp.core contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations


class ModuleDocFragment(object):
    # The attributes every hcp.core module shares; a module states its own details (or another
    # support level) by repeating an attribute, which is merged over these.
    DOCUMENTATION = r"""
attributes:
  check_mode:
    support: full
    description: Can run in check mode and report what would change without changing the target.
  diff_mode:
    support: none
    description: No diff is shown; secrets, shares, keys and sealed material never appear in diffs.
  idempotent:
    support: full
    description: Running the same task twice changes nothing the second time.
  platform:
    support: full
    platforms: posix
    description: Target OS/families that can be operated against.
"""
