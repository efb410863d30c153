# -*- coding: utf-8 -*-
# Copyright: hcp.core contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Helpers shared by the asset generators: profile access with precise errors."""

from __future__ import annotations

import re

from ansible_collections.hcp.core.plugins.module_utils.enrollment.asset_contract import GeneratorError

USER_RE = re.compile(r"\A[a-z_][a-z0-9_.-]{0,31}\Z")
NAME_RE = re.compile(r"\A[a-z0-9][a-z0-9_.-]{0,63}\Z")


def fail(generator, key, problem):
    """A GeneratorError naming the generator and the profile key (never a value)."""
    return GeneratorError("asset generator %s: profile key %s: %s" % (generator, key, problem))


def section(ctx, generator, key, default_type=dict):
    """``ctx.profile[key]`` (a fresh ``default_type()`` when absent), type-checked."""
    profile = ctx.profile if isinstance(ctx.profile, dict) else {}
    value = profile.get(key)
    if value is None:
        return default_type()
    if not isinstance(value, default_type):
        raise fail(generator, key, "must be a %s" % ("mapping" if default_type is dict else "list"))
    return value


def cert_options(ctx, generator):
    """``ctx.profile["certificates"][generator]`` as a dict."""
    certificates = section(ctx, generator, "certificates")
    value = certificates.get(generator) or {}
    if not isinstance(value, dict):
        raise fail(generator, "certificates.%s" % generator, "must be a mapping")
    return value


def positive_int(generator, key, value, maximum):
    """``value`` as an int in 1..maximum."""
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= maximum:
        raise fail(generator, key, "must be an integer from 1 to %d" % maximum)
    return value


def string_list(generator, key, value, pattern=None):
    """``value`` as a list of non-empty strings (each matching ``pattern`` when given)."""
    if not isinstance(value, list) or not all(isinstance(item, str) and item for item in value):
        raise fail(generator, key, "must be a list of non-empty strings")
    for item in value:
        if pattern is not None and not pattern.fullmatch(item):
            raise fail(generator, key, "invalid entry %r" % (item,))
    return value
