# -*- coding: utf-8 -*-
# Copyright: hcp.core contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations


class ModuleDocFragment(object):
    # Options of every plugin that attests with a TPM (module hcp.core.attest, lookup
    # hcp.core.attested_secret); their argument spec is module_helpers.ATTESTATION_ARGUMENT_SPEC.
    # The TPM itself: fragment hcp.core.tpm (O(tcti)).
    DOCUMENTATION = r"""
options:
  servers:
    description: Base URLs of attestation servers, tried in order until one answers.
    type: list
    elements: str
    required: true
    aliases: [url]
  ca_file:
    description: CA bundle verifying the servers' TLS certificates (the system CAs when omitted).
    type: path
  signer_public:
    description: Trusted asset-signer public key (PEM text); this or O(signer_public_file) is required.
    type: str
  signer_public_file:
    description: Path of the trusted asset-signer public key (PEM).
    type: path
  timeout:
    description: Seconds to wait for each HTTP request.
    type: int
    default: 30
  state_dir:
    description:
      - Directory where the highest manifest generation accepted from this server set is remembered
        (C(generations.json), no secret), so a validly signed but older entry (a rolled-back enrollment DB or a
        stale replica) is refused.
      - When omitted, V(/var/lib/hcp/attester) for root (shared with the attester timer of
        P(hcp.core.attestation_client#role)), else C($XDG_STATE_HOME/hcp/attest) (C(~/.local/state/hcp/attest)).
      - Check mode reads it but records nothing.
    type: path
"""
