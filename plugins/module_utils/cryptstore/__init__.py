# -*- coding: utf-8 -*-
# Copyright: hcp.core contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The host's cryptstore: a local encrypted item store whose master key is sealed to the host's
TPM (``store.py``), and export bundles sealed to another TPM's EK (``bundle.py``).
Formats: docs/cryptstore.md."""
