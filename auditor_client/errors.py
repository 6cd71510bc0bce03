"""Errors the auditor client raises, split by who is at fault.

- :class:`ServerRefusedError`: the lab's service said no (bad arguments, quota, permissions);
  the refusal itself is logged in the lab's ledger (``ledger_leaf``).
- :class:`~auditor_client.wire.errors.WireVerificationError` and its subclasses: an answer
  failed verification (signature, binding, receipt): the lab, or something between, sent
  something it cannot prove. Never retried, never ignored.
"""

from __future__ import annotations


class AuditorClientError(Exception):
    """Base class for the client's deliberate failures."""


class ServerRefusedError(AuditorClientError):
    """The service refused a request with a gRPC status.

    Attributes:
        code: gRPC status name, e.g. ``RESOURCE_EXHAUSTED``.
        message: the service's message.
        ledger_leaf: index of the ledger entry recording the refusal, when the service sent it.
        evidence: the lab's signed, logged refusal (a verified exchange whose body holds a
            ``Refusal``), when the request was authenticated; ``None`` for refusals that
            carry no proof (unauthenticated requests, transport errors). A report may only
            call a probe "refused by the lab" with this evidence.
    """

    def __init__(
        self,
        code: str,
        message: str,
        ledger_leaf: int | None,
        evidence: object | None = None,
    ) -> None:
        where = f" (ledger leaf {ledger_leaf})" if ledger_leaf is not None else ""
        super().__init__(f"{code}: {message}{where}")
        self.code = code
        self.message = message
        self.ledger_leaf = ledger_leaf
        self.evidence = evidence


class CampaignError(AuditorClientError):
    """A campaign file, one of the files it names, or a campaign directory is invalid.

    Messages name the file and the field path (``suites.bias.templates[2].groups``) or line.
    """


class CampaignStopped(AuditorClientError):  # noqa: N818 (a state, not a failure)
    """The run stopped early and can be resumed (quota used up, or the lab unreachable)."""
