"""Policy loading: the shipped files, every kind of invalid policy, the hash, the queries."""

from __future__ import annotations

import copy
import re
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from auditor_client.keys import encode_public_key
from auditor_client.wire.digests import key_id
from auditor_server.errors import ConfigError
from auditor_server.policy import Limits, Policy, PolicyError
from auditor_server.policy.schema import METHODS

REPO = Path(__file__).resolve().parents[3]
SHIPPED = REPO / "policy" / "default.yaml"


def _key() -> str:
    return encode_public_key(Ed25519PrivateKey.generate().public_key())


KEY_A, KEY_B, KEY_C = _key(), _key(), _key()

BASE: dict[str, Any] = {
    "version": 1,
    "lab": {"name": "Test Lab"},
    "limits": {"snippet_chars": 100},
    "disclosure": {"public": "full_text", "proprietary": "source_metadata", "private": "none"},
    "roles": {
        "regulator": {
            "methods": list(METHODS),
            "max_top_k": 100,
            "daily_queries": 5000,
            "max_new_tokens": 128,
        },
        "third_party": {
            "methods": ["WhoAmI", "GetPolicy", "Attribute"],
            "max_top_k": 20,
            "daily_queries": 500,
            "max_new_tokens": 64,
            "disclosure": {"public": "snippet"},
        },
    },
    "auditors": [
        {"id": "reg", "role": "regulator", "keys": [{"key": KEY_A, "expires": "2027-12-31"}]},
        {"id": "tp", "role": "third_party", "keys": [{"key": KEY_B}]},
    ],
}


def _load(doc: Any) -> Policy:
    return Policy.from_yaml(yaml.safe_dump(doc, sort_keys=False), source="policy.yaml")


def _mutated(change: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
    doc = copy.deepcopy(BASE)
    change(doc)
    return doc


# --------------------------------------------------------------------------- shipped files


def test_shipped_policy_loads_with_the_documented_roles() -> None:
    policy = Policy.from_file(SHIPPED)
    assert set(policy.roles) == {"regulator", "third_party"}
    regulator, third = policy.role("regulator"), policy.role("third_party")
    assert regulator.methods == frozenset(METHODS)
    assert not third.allows("Score") and third.allows("Attribute")
    assert third.max_top_k < regulator.max_top_k
    assert third.daily_queries < regulator.daily_queries
    assert policy.disclosure_for("third_party", "public") == "snippet"
    assert policy.disclosure_for("regulator", "public") == "full_text"
    for role in policy.roles:
        assert policy.disclosure_for(role, "proprietary") == "source_metadata"
        assert policy.hidden_classes(role) == frozenset({"private"})
    assert re.fullmatch(r"[0-9a-f]{64}", policy.policy_hash)


def test_shipped_registry_has_usable_revoked_and_expired_examples() -> None:
    policy = Policy.from_file(SHIPPED)
    assert {a.id for a in policy.auditors} == {"example-regulator", "example-third-party"}
    keys = [k for a in policy.auditors for k in a.keys]
    assert any(k.revoked for k in keys)
    now = datetime(2026, 1, 1, tzinfo=UTC)
    assert any(k.expires is not None and k.expires < now for k in keys)
    for k in keys:
        assert policy.find_key(k.auditor_id, k.key_id) is k
        assert k.key_id == key_id(k.public_key)
        assert k.role == ("regulator" if k.auditor_id == "example-regulator" else "third_party")
    usable = [k for k in keys if not k.revoked and (k.expires is None or k.expires > now)]
    assert {k.auditor_id for k in usable} == {"example-regulator", "example-third-party"}


def test_limits_defaults_are_pinned() -> None:
    assert Limits() == Limits(
        timestamp_window_s=120,
        max_request_bytes=65536,
        max_batch_items=64,
        max_prompt_chars=4000,
        snippet_chars=160,
        max_concurrent_per_auditor=4,
        call_deadline_s=120,
        unauthenticated_per_minute=30,
    )
    doc = _mutated(lambda d: d.pop("limits"))
    assert _load(doc).limits == Limits()


# --------------------------------------------------------------------------- bad policies


def _set(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def change(doc: dict[str, Any]) -> None:
        *parents, last = path.split("/")
        node: Any = doc
        for part in parents:
            node = node[int(part)] if isinstance(node, list) else node[part]
        if isinstance(node, list):
            node[int(last)] = value
        else:
            node[last] = value

    return change


def _drop(path: str) -> Callable[[dict[str, Any]], None]:
    def change(doc: dict[str, Any]) -> None:
        *parents, last = path.split("/")
        node: Any = doc
        for part in parents:
            node = node[int(part)] if isinstance(node, list) else node[part]
        del node[last]

    return change


def _dup_key(doc: dict[str, Any]) -> None:
    doc["auditors"][1]["keys"][0]["key"] = KEY_A


def _both_registries(doc: dict[str, Any]) -> None:
    doc["auditor_registry"] = "auditors.yaml"


BAD = [
    (
        _set("roles/third_party/max_top_k", -1),
        "policy.yaml: roles.third_party.max_top_k: -1 is less than the minimum of 1",
    ),
    (_set("version", 2), "policy.yaml: version: 1 was expected"),
    (_drop("lab"), r"policy.yaml: lab: missing \(required\)"),
    (_drop("roles/regulator/methods"), r"roles.regulator.methods: missing \(required\)"),
    (_set("surprise", True), "surprise: unexpected field"),
    (_set("roles/regulator/max_topk", 5), "roles.regulator.max_topk: unexpected field"),
    (_set("limits/snippet_chars", "long"), "limits.snippet_chars: 'long' is not of type 'integer'"),
    (_set("limits/max_request_bytes", 0), "limits.max_request_bytes: 0 is less than"),
    (_set("roles/regulator/daily_queries", True), "roles.regulator.daily_queries: True is not"),
    (
        _set("roles/regulator/methods", ["WhoAmI", "DeleteAll"]),
        r"roles.regulator.methods\[1\]: 'DeleteAll' is not one of",
    ),
    (
        _set("roles/regulator/methods", ["WhoAmI", "WhoAmI"]),
        "roles.regulator.methods: .* non-unique",
    ),
    (_set("disclosure/public", "everything"), "disclosure.public: 'everything' is not one of"),
    (_set("disclosure/private", "snippet"), "disclosure.private: must be none"),
    (
        _set("roles/third_party/disclosure/private", "full_text"),
        "roles.third_party.disclosure.private: must be none",
    ),
    (_set("roles/Third-Party", BASE["roles"]["regulator"]), "roles.Third-Party: invalid name"),
    (_set("auditors/0/role", "king"), r"auditors\[0\].role: unknown role 'king'"),
    (_set("auditors/1/id", "reg"), r"auditors\[1\].id: duplicate auditor id 'reg'"),
    (_set("auditors/0/id", "has space"), r"auditors\[0\].id: 'has space' does not match"),
    (_set("auditors/0/keys", []), r"auditors\[0\].keys: \[\] should be non-empty"),
    (
        _set("auditors/0/keys/0/key", "ed25519:not-base64!"),
        r"auditors\[0\].keys\[0\].key: not a valid Ed25519 key",
    ),
    (
        _set("auditors/0/keys/0/key", "rsa:AAAA"),
        r"auditors\[0\].keys\[0\].key: not a valid Ed25519 key: public key must start",
    ),
    (
        _set("auditors/0/keys/0/key", "ed25519:AAAA"),
        r"auditors\[0\].keys\[0\].key: .*must be 32 bytes",
    ),
    (_dup_key, r"auditors\[1\].keys\[0\].key: key already registered at auditors\[0\]"),
    (
        _set("auditors/0/keys/0/expires", "next year"),
        r"auditors\[0\].keys\[0\].expires: 'next year' is not a date",
    ),
    (
        _set("auditors/0/keys/0/revoked", "maybe"),
        r"auditors\[0\].keys\[0\].revoked: 'maybe' is not of type 'boolean'",
    ),
    (_set("auditors/0/keys/0/owner", "x"), r"auditors\[0\].keys\[0\].owner: unexpected field"),
    (_both_registries, "auditor_registry: give exactly one of"),
    (_drop("auditors"), "auditor_registry: give exactly one of"),
]


@pytest.mark.parametrize(("change", "message"), BAD, ids=[m[:48] for _, m in BAD])
def test_bad_policy_is_rejected_naming_the_field(
    change: Callable[[dict[str, Any]], None], message: str
) -> None:
    with pytest.raises(PolicyError, match=message):
        _load(_mutated(change))


def test_policy_error_is_a_config_error() -> None:
    assert issubclass(PolicyError, ConfigError)


def test_all_problems_are_collected_sorted_and_capped() -> None:
    def many(doc: dict[str, Any]) -> None:
        for role in ("regulator", "third_party"):
            doc["roles"][role]["max_top_k"] = 0
            doc["roles"][role]["daily_queries"] = -1
            doc["roles"][role]["max_new_tokens"] = 0
        doc["limits"]["snippet_chars"] = 1

    with pytest.raises(PolicyError) as info:
        _load(_mutated(many))
    lines = str(info.value).splitlines()
    assert len(lines) == 6
    assert lines[-1] == "(and 2 more problems)"
    assert lines[:5] == sorted(lines[:5])
    assert all(line.startswith("policy.yaml: ") for line in lines[:5])


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("version: 1\nversion: 1\n", "line 2, column 1: key 'version' appears more than once"),
        ("version: [1\n", "not valid YAML"),
        ("- just\n- a list\n", r"\(top level\): \[.*\] is not of type 'object'"),
        ("", r"\(top level\): None is not of type 'object'"),
    ],
)
def test_unparseable_documents_are_rejected(text: str, message: str) -> None:
    with pytest.raises(PolicyError, match=message):
        Policy.from_yaml(text, source="policy.yaml")


def _write(tmp_path: Path, policy: dict[str, Any], registry: Any = None) -> Path:
    path = tmp_path / "policy.yaml"
    path.write_text(yaml.safe_dump(policy), encoding="utf-8")
    if registry is not None:
        (tmp_path / "auditors.yaml").write_text(yaml.safe_dump(registry), encoding="utf-8")
    return path


def _split(doc: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    doc = copy.deepcopy(doc)
    registry = {"auditors": doc.pop("auditors")}
    doc["auditor_registry"] = "auditors.yaml"
    return doc, registry


def test_registry_file_errors_name_the_registry_file(tmp_path: Path) -> None:
    policy, registry = _split(BASE)
    registry["auditors"][1]["role"] = "nobody"
    path = _write(tmp_path, policy, registry)
    with pytest.raises(PolicyError, match=r"auditors.yaml: auditors\[1\].role: unknown role"):
        Policy.from_file(path)
    registry["auditors"][1]["role"] = "third_party"
    registry["extra"] = 1
    _write(tmp_path, policy, registry)
    with pytest.raises(PolicyError, match=r"auditors.yaml: extra: unexpected field"):
        Policy.from_file(path)


def test_missing_registry_or_policy_file(tmp_path: Path) -> None:
    policy, _ = _split(BASE)
    path = _write(tmp_path, policy)
    with pytest.raises(PolicyError, match=r"policy\.yaml: auditor_registry: file not found"):
        Policy.from_file(path)
    with pytest.raises(PolicyError, match="file not found"):
        Policy.from_file(tmp_path / "nope.yaml")


def test_registry_needs_a_base_directory() -> None:
    policy, _ = _split(BASE)
    with pytest.raises(PolicyError, match="auditor_registry: a separate registry needs"):
        _load(policy)


# --------------------------------------------------------------------------- hash


def test_cosmetic_edits_keep_the_hash(tmp_path: Path) -> None:
    reference = _load(BASE).policy_hash
    # Reordered keys, reordered method list and auditors, comments, flow style, quoting.
    doc = copy.deepcopy(BASE)
    doc["roles"]["regulator"]["methods"].reverse()
    doc["auditors"].reverse()
    reordered = {k: doc[k] for k in reversed(list(doc))}
    text = "# a comment\n" + yaml.safe_dump(reordered, default_flow_style=True, sort_keys=True)
    assert Policy.from_yaml(text).policy_hash == reference
    # Defaults spelled out, or left out, mean the same.
    spelled = _mutated(lambda d: d["limits"].update(timestamp_window_s=120, max_batch_items=64))
    assert _load(spelled).policy_hash == reference
    assert _load(_mutated(_drop("disclosure"))).policy_hash == reference
    # The same date written as the equivalent timestamp.
    stamp = _set("auditors/0/keys/0/expires", "2027-12-31T23:59:59.999999+00:00")
    assert _load(_mutated(stamp)).policy_hash == reference
    # A registry file instead of the inline list.
    policy, registry = _split(BASE)
    assert Policy.from_file(_write(tmp_path, policy, registry)).policy_hash == reference


@pytest.mark.parametrize(
    "change",
    [
        _set("roles/third_party/daily_queries", 501),
        _set("limits/snippet_chars", 101),
        _set("lab/name", "Other Lab"),
        _set("auditors/1/keys/0/revoked", True),
        _set("auditors/0/keys/0/expires", "2028-01-01"),
        _set("auditors/1/keys/0/key", KEY_C),
        _set("auditors/1/role", "regulator"),
        _set("roles/third_party/disclosure/public", "full_text"),
        _set("roles/third_party/withheld_budget", 3),
        _set("roles/third_party/generate_proprietary", "withhold"),
        _set("limits/max_concurrent_per_auditor", 2),
        _set("limits/call_deadline_s", 30),
        _set("limits/unauthenticated_per_minute", 5),
    ],
)
def test_meaningful_edits_change_the_hash(change: Callable[[dict[str, Any]], None]) -> None:
    assert _load(_mutated(change)).policy_hash != _load(BASE).policy_hash


def test_registry_file_edits_change_the_hash(tmp_path: Path) -> None:
    policy, registry = _split(BASE)
    path = _write(tmp_path, policy, registry)
    before = Policy.from_file(path).policy_hash
    registry["auditors"].append({"id": "new", "role": "regulator", "keys": [{"key": KEY_C}]})
    _write(tmp_path, policy, registry)
    assert Policy.from_file(path).policy_hash != before


# --------------------------------------------------------------------------- queries


def test_find_key_matches_auditor_and_key_together() -> None:
    policy = _load(BASE)
    kid_a = key_id(Ed25519PrivateKey.generate().public_key())
    reg = policy.auditors[0]
    assert reg.id == "reg"
    (key,) = reg.keys
    assert policy.find_key("reg", key.key_id) is key
    assert policy.find_key("tp", key.key_id) is None
    assert policy.find_key("reg", kid_a) is None
    assert key.expires == datetime(2027, 12, 31, 23, 59, 59, 999999, tzinfo=UTC)
    assert key.revoked is False and key.role == "regulator"


@pytest.mark.parametrize(
    ("written", "expected"),
    [
        ("2027-06-30", datetime(2027, 6, 30, 23, 59, 59, 999999, tzinfo=UTC)),
        ("2027-06-30T12:00:00Z", datetime(2027, 6, 30, 12, tzinfo=UTC)),
        ("2027-06-30 12:00:00", datetime(2027, 6, 30, 12, tzinfo=UTC)),
        ("2027-06-30T14:00:00+02:00", datetime(2027, 6, 30, 12, tzinfo=UTC)),
    ],
)
def test_expiry_forms(written: str, expected: datetime) -> None:
    text = yaml.safe_dump(BASE).replace("2027-12-31", written)
    text = text.replace(f"'{written}'", written)  # unquoted, as a lab would write it
    policy = Policy.from_yaml(text)
    assert policy.auditors[0].keys[0].expires == expected


def test_disclosure_queries() -> None:
    policy = _load(_mutated(_set("roles/third_party/disclosure/proprietary", "none")))
    assert policy.disclosure_for("third_party", "public") == "snippet"
    assert policy.disclosure_for("third_party", "proprietary") == "none"
    assert policy.hidden_classes("third_party") == frozenset({"private", "proprietary"})
    assert policy.hidden_classes("regulator") == frozenset({"private"})
    assert policy.disclosure_for("regulator", "something-new") == "none"
    with pytest.raises(PolicyError, match="no role named 'ghost'"):
        policy.role("ghost")
    with pytest.raises(PolicyError, match="no role named"):
        policy.hidden_classes("ghost")


def test_model_channel_settings_per_role() -> None:
    policy = _load(
        _mutated(
            lambda d: d["roles"]["third_party"].update(
                withheld_budget=3, generate_proprietary="withhold"
            )
        )
    )
    assert policy.role("regulator").withheld_budget == 20  # the default
    assert policy.role("regulator").generate_proprietary == "allow"
    assert policy.role("third_party").withheld_budget == 3
    assert policy.generation_withheld_classes("regulator") == {"private"}
    assert policy.generation_withheld_classes("third_party") == {"private", "proprietary"}
    with pytest.raises(PolicyError, match="generate_proprietary"):
        _load(_mutated(_set("roles/regulator/generate_proprietary", "sometimes")))
    with pytest.raises(PolicyError, match="withheld_budget"):
        _load(_mutated(_set("roles/regulator/withheld_budget", -1)))
