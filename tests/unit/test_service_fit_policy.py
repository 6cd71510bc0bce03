"""``serve`` refuses a policy that hides a data class the index's preconditioner was fitted on.

The fit shapes every answer; a class some role may not see must not shape the answers that
role gets (issue 10). Checked at start and on every SIGHUP reload.
"""

from __future__ import annotations

import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from auditor_server.attribution.config import IndexConfig
from auditor_server.errors import ConfigError
from auditor_server.policy.model import Policy
from auditor_server.service import check_fit_excludes
from tests.unit.test_service_evaluation import Lab, _lab

HIDES_PROPRIETARY = """\
version: 1
lab: {name: Fit Test Lab}
disclosure: {public: full_text, proprietary: source_metadata, private: none}
roles:
  regulator:
    methods: [WhoAmI, GetPolicy]
    max_top_k: 5
    daily_queries: 10
    max_new_tokens: 8
  press:
    methods: [WhoAmI]
    max_top_k: 5
    daily_queries: 10
    max_new_tokens: 8
    disclosure: {proprietary: none}
auditor_registry: auditors.yaml
"""


def _policy(tmp_path: Path, text: str) -> Policy:
    (tmp_path / "auditors.yaml").write_text("auditors: []\n")
    path = tmp_path / "policy.yaml"
    path.write_text(textwrap.dedent(text))
    return Policy.from_file(path)


def _manifest(config: IndexConfig) -> dict[str, object]:
    return {"index_config": config.to_dict()}


def test_a_policy_hiding_a_fitted_class_is_refused(tmp_path: Path) -> None:
    policy = _policy(tmp_path, HIDES_PROPRIETARY)
    assert policy.hidden_from_some_role() == {"private", "proprietary"}
    with pytest.raises(ConfigError, match=r"hides proprietary.*reindex"):
        check_fit_excludes(policy, _manifest(IndexConfig()))
    check_fit_excludes(policy, _manifest(IndexConfig(fit_exclude_classes=("proprietary",))))


def test_private_must_be_out_of_the_fit_too(tmp_path: Path) -> None:
    policy = _policy(
        tmp_path, HIDES_PROPRIETARY.replace("    disclosure: {proprietary: none}\n", "")
    )
    check_fit_excludes(policy, _manifest(IndexConfig()))
    with pytest.raises(ConfigError, match="hides private"):
        check_fit_excludes(policy, _manifest(IndexConfig(exclude_private_from_fit=False)))


def test_an_unknown_fit_class_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="unknown data class"):
        IndexConfig(fit_exclude_classes=("secret",))
    with pytest.raises(ConfigError, match="sorted and unique"):
        IndexConfig(fit_exclude_classes=("public", "proprietary"))


@pytest.fixture
def opened() -> Iterator[list[Lab]]:
    labs: list[Lab] = []
    yield labs
    for lab in labs:
        lab.service.close()


def test_sighup_keeps_the_old_policy_when_the_new_one_hides_a_fitted_class(
    opened: list[Lab], tmp_path: Path
) -> None:
    lab = _lab(opened, tmp_path)
    lab.service.engine.manifest["index_config"] = IndexConfig().to_dict()  # type: ignore[index]
    before = lab.service.policy.policy_hash
    policy_path = lab.root / "policy.yaml"
    original = policy_path.read_text()
    policy_path.write_text(
        original.replace(
            "auditor_registry",
            "  press:\n    methods: [WhoAmI]\n    max_top_k: 5\n"
            "    daily_queries: 10\n    max_new_tokens: 8\n    disclosure: {proprietary: none}\n"
            "auditor_registry",
        )
    )
    Policy.from_file(policy_path)  # a valid policy in itself
    assert lab.service.reload_policy() is False
    assert lab.service.policy.policy_hash == before
    policy_path.write_text(original.replace("Evaluation Test Lab", "Renamed Lab"))
    assert lab.service.reload_policy() is True
    assert lab.service.policy.policy_hash != before
