"""The one failure a report verification raises.

A report is a bundle of the lab's signed answers plus the auditor's findings about them; a
regulator re-checks it offline. Any failure (a bad signature, a broken proof, an edited
finding) means the bundle cannot be relied on, so it is a
:class:`~auditor_client.wire.errors.WireVerificationError` like any failed answer: callers
that already refuse unprovable answers with one ``except`` refuse bad reports the same way,
and the ``auditor`` command maps it to exit 4.
"""

from __future__ import annotations

from auditor_client.wire.errors import WireVerificationError


class ReportVerificationError(WireVerificationError):
    """A report failed verification; the message starts with the entry that failed.

    Entries are named by their JSON path and, for probes, the suite and probe id, e.g.
    ``probes[3] (copyright/ref-07) exchange 1: response signature does not verify ...`` or
    ``findings.toxicity.toxicity_rate: stored 0.4, recomputed 0.5``, so a reader can go
    straight to the offending bytes.

    Attributes:
        entry: the path of the failing entry (``probes[3] (copyright/ref-07) exchange 1``).
        detail: what was wrong with it.
    """

    def __init__(self, entry: str, detail: str) -> None:
        super().__init__(f"{entry}: {detail}")
        self.entry = entry
        self.detail = detail
