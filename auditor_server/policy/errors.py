"""Errors of the policy package, split by who is at fault.

A bad policy file is the lab's configuration mistake (:class:`PolicyError`, a
:class:`~auditor_server.errors.ConfigError`, so the server refuses to start). A request to
disclose something the policy hides is a bug in the caller, never the auditor's fault
(:class:`DisclosureError`), so it must not be mapped to an "invalid argument" status.
"""

from __future__ import annotations

from auditor_server.errors import ConfigError, SandboxError

__all__ = ["DisclosureError", "PolicyError"]


class PolicyError(ConfigError):
    """The policy file or its auditor registry is invalid.

    The message names the file and the dotted field path of every problem reported, e.g.
    ``policy.yaml: roles.third_party.max_top_k: -1 is less than the minimum of 1``.
    """


class DisclosureError(SandboxError):
    """Internal failure: the service asked to disclose a result the policy hides.

    Raised instead of returning anything, so a missing filter upstream fails closed.
    """
