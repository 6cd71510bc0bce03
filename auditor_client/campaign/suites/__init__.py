"""The probe suites a campaign can run, by the name used under ``suites:`` in its file.

Importing this package loads no classifier, numpy or torch: the toxicity suite imports its
classifier on first use (see :mod:`auditor_client.campaign.suites.toxicity`).
"""

from __future__ import annotations

from auditor_client.campaign.suites.bias import BiasSuite
from auditor_client.campaign.suites.copyright import CopyrightSuite
from auditor_client.campaign.suites.privacy import PrivacySuite
from auditor_client.campaign.suites.toxicity import ToxicitySuite
from auditor_client.campaign.types import Suite

SUITES: dict[str, Suite] = {
    "copyright": CopyrightSuite(),
    "bias": BiasSuite(),
    "toxicity": ToxicitySuite(),
    "privacy": PrivacySuite(),
}

__all__ = ["SUITES", "BiasSuite", "CopyrightSuite", "PrivacySuite", "ToxicitySuite"]
