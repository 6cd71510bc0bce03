"""The lab's policy: load and validate it, decide what each result may reveal, count quotas.

* :mod:`~auditor_server.policy.model`: :class:`Policy` (roles, limits, disclosure, the
  auditor key registry and the policy hash), parsed and validated from YAML.
* :mod:`~auditor_server.policy.disclose`: one engine result -> what may leave the lab.
* :mod:`~auditor_server.policy.scrub`: emails and phone numbers out of returned text.
* :mod:`~auditor_server.policy.quota`: daily query quotas in SQLite.
"""

from __future__ import annotations

from auditor_server.policy.disclose import DisclosedResult, disclose
from auditor_server.policy.errors import DisclosureError, PolicyError
from auditor_server.policy.model import (
    AuditorEntry,
    DisclosureLevel,
    Limits,
    Policy,
    RegisteredKey,
    Role,
)
from auditor_server.policy.quota import QuotaDecision, QuotaStore
from auditor_server.policy.scrub import scrub

__all__ = [
    "AuditorEntry",
    "DisclosedResult",
    "DisclosureError",
    "DisclosureLevel",
    "Limits",
    "Policy",
    "PolicyError",
    "QuotaDecision",
    "QuotaStore",
    "RegisteredKey",
    "Role",
    "disclose",
    "scrub",
]
