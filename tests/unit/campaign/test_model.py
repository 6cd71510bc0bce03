"""Campaign files: strict validation naming the field, defaults, overrides and the hash."""

from __future__ import annotations

import hashlib
import textwrap
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

from auditor_client.campaign.checkpoint import checkpoint_name
from auditor_client.campaign.model import (
    DEFAULT_CONCURRENCY,
    DEFAULT_SEED,
    Campaign,
    CampaignFiles,
    file_sha256,
)
from auditor_client.campaign.runner import carried_inputs, plan_campaign
from auditor_client.campaign.types import JSON, Call, ProbeRecord, ProbeSpec
from auditor_client.errors import CampaignError
from auditor_client.keys import generate_keypair
from auditor_client.wire._proto import audit_pb2 as pb

LAB_KEY = "ed25519:" + "A" * 43 + "="

BASE = f"""\
version: 1
name: demo-audit
server:
  address: localhost:50551
  tls_ca: certs/ca.pem
lab_key: "{LAB_KEY}"
auditor: {{key_dir: keys/me, id: me}}
suites:
  copyright: {{prompts: prompts.txt}}
"""


def write(tmp_path: Path, text: str, name: str = "campaign.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def load(tmp_path: Path, text: str) -> Campaign:
    return Campaign.from_file(write(tmp_path, text))


# ---------------------------------------------------------------------------- bad files

BAD: list[tuple[str, str, str]] = [
    # (id, replace this, with this) applied to BASE; the error must name the field path
    ("unknown-top", "name: demo-audit", "name: demo-audit\nconcurency: 2"),
    ("version", "version: 1", "version: 2"),
    ("name-missing", "name: demo-audit\n", ""),
    ("name-pattern", "name: demo-audit", "name: 'has spaces'"),
    ("address", "address: localhost:50551", "address: localhost"),
    ("server-extra", "tls_ca: certs/ca.pem", "tls_ca: certs/ca.pem\n  port: 5"),
    ("insecure-type", "tls_ca: certs/ca.pem", "insecure: maybe"),
    ("insecure-with-tls", "tls_ca: certs/ca.pem", "tls_ca: certs/ca.pem\n  insecure: true"),
    ("mtls-half", "tls_ca: certs/ca.pem", "tls_ca: certs/ca.pem\n  tls_cert: c.pem"),
    ("lab-key-bad", f'lab_key: "{LAB_KEY}"', 'lab_key: "ed25519:short"'),
    ("lab-key-both", f'lab_key: "{LAB_KEY}"', f'lab_key: "{LAB_KEY}"\nlab_key_file: lab.pub'),
    ("lab-key-none", f'lab_key: "{LAB_KEY}"\n', ""),
    ("auditor-key-dir", "{key_dir: keys/me, id: me}", "{id: me}"),
    ("auditor-extra", "{key_dir: keys/me, id: me}", "{key_dir: keys/me, role: x}"),
    ("auditor-id-empty", "{key_dir: keys/me, id: me}", "{key_dir: keys/me, id: ''}"),
    ("concurrency-low", "name: demo-audit", "name: demo-audit\nconcurrency: 0"),
    ("concurrency-high", "name: demo-audit", "name: demo-audit\nconcurrency: 33"),
    ("concurrency-type", "name: demo-audit", "name: demo-audit\nconcurrency: '4'"),
    ("seed-negative", "name: demo-audit", "name: demo-audit\nseed: -1"),
    ("suite-unknown", "copyright: {prompts: prompts.txt}", "copyrite: {prompts: prompts.txt}"),
    ("suite-not-map", "copyright: {prompts: prompts.txt}", "bias: [1, 2]"),
    ("suites-empty", "  copyright: {prompts: prompts.txt}\n", "  {}\n"),
    ("output-type", "name: demo-audit", "name: demo-audit\noutput: 5"),
]

EXPECTED_PATH = {
    "unknown-top": "concurency: unexpected field",
    "version": "version: 1 was expected",
    "name-missing": "name: missing",
    "name-pattern": "name: 'has spaces' does not match",
    "address": "server.address: 'localhost' is not host:port",
    "server-extra": "server.port: unexpected field",
    "insecure-type": "server.insecure: 'maybe' is not of type 'boolean'",
    "insecure-with-tls": "server.tls_ca: not allowed with insecure",
    "mtls-half": "server.tls_key: missing",
    "lab-key-bad": "lab_key: not an Ed25519 public key",
    "lab-key-both": "lab_key: give exactly one",
    "lab-key-none": "lab_key: give exactly one",
    "auditor-key-dir": "auditor.key_dir: missing",
    "auditor-extra": "auditor.role: unexpected field",
    "auditor-id-empty": "auditor.id: '' does not match",
    "concurrency-low": "concurrency: 0 is less than the minimum of 1",
    "concurrency-high": "concurrency: 33 is greater than the maximum of 32",
    "concurrency-type": "concurrency: '4' is not of type 'integer'",
    "seed-negative": "seed: -1 is less than the minimum of 0",
    "suite-unknown": "suites.copyrite: unexpected field",
    "suite-not-map": r"suites.bias: \[1, 2\] is not of type 'object'",
    "suites-empty": "suites: name at least one suite",
    "output-type": "output: 5 is not of type 'string'",
}


@pytest.mark.parametrize(("case", "old", "new"), BAD, ids=[b[0] for b in BAD])
def test_bad_campaign_names_the_field(tmp_path: Path, case: str, old: str, new: str) -> None:
    assert old in BASE
    with pytest.raises(CampaignError, match=r"campaign\.yaml: " + EXPECTED_PATH[case]):
        load(tmp_path, BASE.replace(old, new, 1))


def test_every_problem_is_reported_sorted(tmp_path: Path) -> None:
    text = BASE.replace("version: 1", "version: 1\nconcurrency: 0\nseed: -3").replace(
        "{key_dir: keys/me, id: me}", "{id: me}"
    )
    with pytest.raises(CampaignError) as info:
        load(tmp_path, text)
    lines = str(info.value).splitlines()
    assert [line.split(": ")[1] for line in lines] == ["auditor.key_dir", "concurrency", "seed"]


def test_not_yaml_duplicate_keys_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(CampaignError, match=r"not valid YAML: line \d+, column \d+"):
        load(tmp_path, BASE + "suites: {bias: {}}\n")
    with pytest.raises(CampaignError, match="not valid YAML"):
        load(tmp_path, "version: [1\n")
    with pytest.raises(CampaignError, match=r"\(top level\): None is not of type 'object'"):
        load(tmp_path, "")
    with pytest.raises(CampaignError, match="file not found"):
        Campaign.from_file(tmp_path / "nope.yaml")


# ---------------------------------------------------------------------------- defaults


def test_defaults_and_resolved_paths(tmp_path: Path) -> None:
    c = load(tmp_path, BASE)
    assert c.concurrency == DEFAULT_CONCURRENCY == 4
    assert c.seed == DEFAULT_SEED == 0
    assert c.output is None
    assert c.server.insecure is False
    assert c.server.tls_ca == tmp_path / "certs/ca.pem"
    assert c.server.tls_cert is None and c.server.tls_key is None
    assert c.auditor.key_dir == tmp_path / "keys/me"
    assert c.auditor.id == "me"
    assert c.lab_public_key() == LAB_KEY
    assert c.base_dir == tmp_path
    assert dict(c.suites) == {"copyright": {"prompts": "prompts.txt"}}
    assert c.document["concurrency"] == 4 and c.document["seed"] == 0
    assert c.document["server"]["insecure"] is False
    with pytest.raises(AttributeError):
        c.seed = 5  # type: ignore[misc]


def test_lab_key_file_and_overrides(tmp_path: Path) -> None:
    text = BASE.replace(f'lab_key: "{LAB_KEY}"', "lab_key_file: lab.pub")
    c = load(tmp_path, text)
    with pytest.raises(CampaignError, match="lab_key_file: file not found"):
        c.lab_public_key()
    (tmp_path / "lab.pub").write_text("not a key\n")
    with pytest.raises(CampaignError, match="lab_key_file: public key must start"):
        c.lab_public_key()
    (tmp_path / "lab.pub").write_text(LAB_KEY + "\n")
    assert c.lab_public_key() == LAB_KEY

    o = c.with_overrides(server="127.0.0.1:9", insecure=True, key_dir=tmp_path / "k")
    assert o.server.address == "127.0.0.1:9" and o.server.insecure and o.server.tls_ca is None
    assert o.auditor.key_dir == tmp_path / "k" and o.auditor.id is None
    assert o.document == c.document  # overrides never change what the hash covers
    assert c.with_overrides(lab_key=LAB_KEY).lab_key == LAB_KEY
    with pytest.raises(CampaignError, match="--server"):
        c.with_overrides(server="nope")
    with pytest.raises(CampaignError, match="--insecure cannot"):
        c.with_overrides(insecure=True, tls_ca=tmp_path / "ca.pem")
    with pytest.raises(CampaignError, match="--lab-key"):
        c.with_overrides(lab_key="ed25519:xx")


# ---------------------------------------------------------------------------- hash


class FileSuite:
    """A suite whose probes are the lines of the file its section names."""

    name = "copyright"

    def plan(
        self, config: Mapping[str, Any], *, files: CampaignFiles, seed: int
    ) -> list[ProbeSpec]:
        lines = files.read_text(str(config["prompts"])).splitlines()
        return [ProbeSpec("copyright", f"p{i}", {"prompt": t}) for i, t in enumerate(lines)]

    def next_call(self, spec: ProbeSpec, answers: Sequence[pb.ResponseBody]) -> Call | None:
        raise AssertionError("not run in unit tests")

    def findings(self, spec: ProbeSpec, answers: Sequence[pb.ResponseBody]) -> JSON:
        return {}

    def summarize(self, records: Sequence[ProbeRecord]) -> JSON:
        return {}


class DupSuite(FileSuite):
    def plan(
        self, config: Mapping[str, Any], *, files: CampaignFiles, seed: int
    ) -> list[ProbeSpec]:
        return [ProbeSpec("copyright", "same", {}), ProbeSpec("copyright", "same", {"x": 1})]


def test_hash_follows_referenced_inputs_not_formatting(tmp_path: Path) -> None:
    (tmp_path / "prompts.txt").write_text("The quick\nOnce upon\n")
    suites = {"copyright": FileSuite()}
    first = plan_campaign(load(tmp_path, BASE), suites=suites)
    assert first.per_suite == {"copyright": 2} and len(first.campaign_hash) == 64

    reformatted = (
        "# a comment\n"
        + BASE.replace(
            "auditor: {key_dir: keys/me, id: me}", "auditor:\n  id: me   # me\n  key_dir: 'keys/me'"
        )
        + "\n\n"
    )
    again = plan_campaign(load(tmp_path, reformatted), suites=suites)
    assert again.campaign_hash == first.campaign_hash

    # An explicit default is the same campaign as an implicit one.
    explicit = BASE.replace("name: demo-audit", "name: demo-audit\nconcurrency: 4\nseed: 0")
    assert plan_campaign(load(tmp_path, explicit), suites=suites).campaign_hash == (
        first.campaign_hash
    )

    (tmp_path / "prompts.txt").write_text("The quick\nOnce upon a\n")
    changed = plan_campaign(load(tmp_path, BASE), suites=suites)
    assert changed.campaign_hash != first.campaign_hash

    seeded = BASE.replace("name: demo-audit", "name: demo-audit\nseed: 7")
    assert plan_campaign(load(tmp_path, seeded), suites=suites).campaign_hash not in (
        first.campaign_hash,
        changed.campaign_hash,
    )


def test_the_hash_covers_every_file_the_suites_read_and_they_travel(tmp_path: Path) -> None:
    """Planning reads through CampaignFiles, which records each file: the hash covers them
    and planning again from the recorded copies alone gives the same plan and hash."""
    (tmp_path / "prompts.txt").write_text("The quick\r\nOnce upon\n")
    suites = {"copyright": FileSuite()}
    campaign = load(tmp_path, BASE)
    plan = plan_campaign(campaign, suites=suites)
    assert dict(plan.files) == {"prompts.txt": "The quick\r\nOnce upon\n"}  # bytes as read
    carried = carried_inputs(campaign, plan)
    assert carried["campaign_file_text"] == (tmp_path / "campaign.yaml").read_text()
    assert carried["files"] == {
        "prompts.txt": {
            "sha256": hashlib.sha256(b"The quick\r\nOnce upon\n").hexdigest(),
            "text": "The quick\r\nOnce upon\n",
        }
    }
    texts = {name: entry["text"] for name, entry in carried["files"].items()}
    again = plan_campaign(
        Campaign.from_yaml(carried["campaign_file_text"]),
        suites=suites,
        files=CampaignFiles.from_report(texts, where="campaign.files"),
    )
    assert (again.specs, again.campaign_hash) == (plan.specs, plan.campaign_hash)
    assert file_sha256("é") == hashlib.sha256("é".encode()).hexdigest()

    # A file the report does not carry is named by its entry.
    with pytest.raises(CampaignError, match=r'no such file: campaign\.files\["prompts\.txt"\]'):
        plan_campaign(
            campaign,
            suites={"copyright": _ReadingSuite()},
            files=CampaignFiles.from_report({}, where="campaign.files"),
        )


class _ReadingSuite(FileSuite):
    """Reads its file the way the shipped suites do (errors naming the section's field)."""

    def plan(
        self, config: Mapping[str, Any], *, files: CampaignFiles, seed: int
    ) -> list[ProbeSpec]:
        from auditor_client.campaign.suites import _config

        _config.read_file("copyright", "prompts", str(config["prompts"]), files)
        return []


def test_plan_rejects_duplicate_ids_and_unregistered_suites(tmp_path: Path) -> None:
    c = load(tmp_path, BASE)
    with pytest.raises(CampaignError, match=r"suites\.copyright: probe id 'same' is planned twice"):
        plan_campaign(c, suites={"copyright": DupSuite()})
    with pytest.raises(CampaignError, match=r"suites\.copyright: no such suite"):
        plan_campaign(c, suites={})


def test_checkpoint_names_are_safe_and_distinct() -> None:
    assert checkpoint_name("p-1.a_b") == "p-1.a_b.json"
    odd = ["a/b", "a_b~x", "a:b", "..", "", "é", "a" * 300, "a" * 301]
    names = [checkpoint_name(i) for i in odd]
    assert len(set(names)) == len(odd)
    for n in names:
        assert "/" not in n and not n.startswith(".") and len(n) < 140


def test_key_dir_is_not_read_at_load(tmp_path: Path) -> None:
    # A shipped campaign can be validated and planned before its keys exist.
    c = load(tmp_path, BASE)
    assert not c.auditor.key_dir.exists()
    generate_keypair(c.auditor.key_dir)
    assert (c.auditor.key_dir / "auditor.key").exists()


def test_plan_command_prints_counts_and_hash(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from click.testing import CliRunner

    from auditor_client.campaign import runner
    from auditor_client.campaign.commands import campaign_group

    (tmp_path / "prompts.txt").write_text("a\nb\nc\n")
    monkeypatch.setattr(runner, "_default_suites", lambda: {"copyright": FileSuite()})
    path = write(tmp_path, BASE)
    result = CliRunner().invoke(campaign_group, ["plan", str(path)])
    assert result.exit_code == 0, result.output
    expected = plan_campaign(Campaign.from_file(path), suites={"copyright": FileSuite()})
    assert "copyright: 3 probes" in result.output
    assert f"campaign hash: {expected.campaign_hash}" in result.output
    bad = write(tmp_path, BASE.replace("version: 1", "version: 3"), "bad.yaml")
    result = CliRunner().invoke(campaign_group, ["plan", str(bad)])
    assert result.exit_code == 2 and "bad.yaml: version" in result.output
