# -*- coding: utf-8 -*-
# Copyright: hcp.core contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The common part of hcp.core's lookups: options first, one error path."""

from __future__ import annotations

from ansible.errors import AnsibleLookupError
from ansible.plugins.lookup import LookupBase

from ansible_collections.hcp.core.plugins.module_utils.module_helpers import service_client_args


class HcpLookupBase(LookupBase):
    """Base of hcp.core lookups. Subclasses set NAME and call ``load_options`` first in ``run``."""

    NAME = "hcp.core"

    def load_options(self, variables, kwargs):
        self.set_options(var_options=variables, direct=kwargs)

    def fail(self, exc_or_message):
        """Raise AnsibleLookupError naming the lookup and the cause (an HcpError or a message)."""
        raise AnsibleLookupError("%s: %s" % (self.NAME, exc_or_message)) from (
            exc_or_message if isinstance(exc_or_message, BaseException) else None)

    def service_client_args(self):
        """The service clients' constructor arguments from the options of fragment hcp.core.service_client."""
        return service_client_args(self.get_option)
