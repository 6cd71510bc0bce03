"""The lab's policy: who may call what, how much, and what each result may reveal.

A policy is one YAML file (shape in :mod:`auditor_server.policy.schema`) plus an auditor
registry, either inline (``auditors:``) or in a separate file (``auditor_registry:``, a path
relative to the policy file) so a lab can rotate auditor keys without touching the rules.
:meth:`Policy.from_file` parses and validates everything in one step; everything else in
the server trusts the resulting frozen objects without re-checking them.

Validation is strict because a policy mistake is a disclosure mistake: unknown fields are
errors (a misspelt limit must not silently fall back to a default), every error names the
file and the dotted field path, and ``private`` data can never be configured to be shown.
This module does no IO beyond reading those two files.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time
from pathlib import Path
from types import MappingProxyType
from typing import Any, Final, Literal, cast

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from jsonschema import Draft202012Validator, ValidationError

from auditor_client.configfile import Problem, describe, dotted, join, load_yaml, raise_problems
from auditor_client.keys import KeyFileError, decode_public_key, encode_public_key
from auditor_client.wire.digests import key_id as compute_key_id
from auditor_server.corpus.records import DATA_CLASSES
from auditor_server.policy.errors import PolicyError
from auditor_server.policy.schema import POLICY_SCHEMA, REGISTRY_SCHEMA

__all__ = [
    "DEFAULT_DISCLOSURE",
    "AuditorEntry",
    "DisclosureLevel",
    "Limits",
    "Policy",
    "RegisteredKey",
    "Role",
]

DisclosureLevel = Literal["full_text", "snippet", "source_metadata", "none"]
"""What one result may reveal: the record's text, a short window of it, its source only, or
nothing at all (the class is then removed before ranking)."""

DEFAULT_DISCLOSURE: Final[Mapping[str, DisclosureLevel]] = MappingProxyType(
    {"public": "full_text", "proprietary": "source_metadata", "private": "none"}
)
"""Per-class disclosure used where the policy's ``disclosure:`` block leaves a class out."""

MAX_REPORTED_ERRORS: Final = 5
"""How many problems one :class:`PolicyError` lists before saying "and N more"."""

_PRIVATE_REASON = (
    "must be none: private records (personal data) are never revealed, ranked or counted, "
    "whatever the role; remove this line or set it to none"
)


# ---------------------------------------------------------------------------- dataclasses


@dataclass(frozen=True, slots=True, kw_only=True)
class Limits:
    """Server-wide request limits (the ``limits:`` block; every field optional)."""

    timestamp_window_s: int = 120
    """Accepted clock skew, either way, between an auditor's signed timestamp and ours."""
    max_request_bytes: int = 65536
    """Largest serialized ``SignedRequest`` accepted; checked before anything is parsed."""
    max_batch_items: int = 64
    """Most items in one ``AttributeBatch`` request."""
    max_prompt_chars: int = 4000
    """Longest prompt (and completion) accepted, in characters."""
    snippet_chars: int = 160
    """Length of a ``snippet`` disclosure: the window shown around the matched span."""
    max_concurrent_per_auditor: int = 4
    """Most model-channel calls (Generate, Score, Attribute, AttributeBatch) one auditor may
    have in flight; more are refused at once, so one auditor cannot hold every worker."""
    call_deadline_s: int = 120
    """Longest any call may run, and the deadline of calls and streams that bring none (a
    stream nobody reads would otherwise hold a worker for ever)."""
    unauthenticated_per_minute: int = 30
    """Failed authentications one peer address may make per minute before its requests are
    refused unparsed for the rest of that minute."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Role:
    """What auditors holding one role may do and see."""

    name: str
    """The role's name as written under ``roles:``."""
    methods: frozenset[str]
    """RPC names the role may call (short names, e.g. ``"Attribute"``)."""
    max_top_k: int
    """Largest ``top_k`` an attribution request may ask for."""
    daily_queries: int
    """Billable queries (generate, score, attribute; per batch item) per UTC day."""
    max_new_tokens: int
    """Largest ``max_new_tokens`` a generate request may ask for."""
    withheld_budget: int = 20
    """Requests per UTC day whose text may touch withheld training text (a Score refused,
    or an Attribute answered without its log-probability, for that reason) before the
    auditor's model-channel methods are suspended for the rest of the day. Each such
    refusal answers a membership question about withheld text, so they are rationed."""
    generate_proprietary: Literal["allow", "withhold"] = "allow"
    """Whether Generate may reproduce proprietary training text (``withhold`` steers
    decoding away from it as from private text)."""
    disclosure: Mapping[str, DisclosureLevel]
    """Resolved disclosure for every data class: the role's override, else the default."""

    def allows(self, method: str) -> bool:
        """Whether this role may call ``method`` (a short RPC name)."""
        return method in self.methods


@dataclass(frozen=True, slots=True, kw_only=True)
class RegisteredKey:
    """One registered auditor public key, as the request verifier looks it up.

    Revoked and expired keys are kept (not dropped at load time) so the verifier can tell
    the auditor *why* a request was refused instead of "unknown key".
    """

    auditor_id: str
    """The auditor this key belongs to."""
    role: str
    """That auditor's role (a key of :attr:`Policy.roles`)."""
    public_key: Ed25519PublicKey = field(repr=False)
    """The decoded Ed25519 public key."""
    key_id: str
    """:func:`auditor_client.wire.digests.key_id` of the key; what requests name."""
    key_text: str
    """The key in its published ``ed25519:<base64>`` form."""
    expires: datetime | None
    """When the key stops being valid (UTC); ``None`` means never. A bare date in the file
    means the very end of that day, UTC."""
    revoked: bool
    """Whether the lab has revoked the key."""
    revoked_reason: str | None = None
    """Why it was revoked, if the lab said; shown to nobody but the lab."""


@dataclass(frozen=True, slots=True, kw_only=True)
class AuditorEntry:
    """One registered auditor: an id, a role and one or more keys."""

    id: str
    role: str
    keys: tuple[RegisteredKey, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class Policy:
    """A validated, resolved policy. Build it with :meth:`from_file` or :meth:`from_yaml`.

    ``policy_hash`` is the hex SHA-256 of a canonical JSON encoding (sorted keys, no
    whitespace, UTF-8) of the *validated and resolved* document: defaults filled in, each
    role's disclosure resolved for every class, method lists sorted, auditors sorted by id
    and their keys by key text, expiry dates normalised to UTC timestamps, and the registry's
    *contents* in place of its file name. So cosmetic edits (comments, key order,
    whitespace, quoting, moving the registry inline) leave the hash unchanged, while any
    change of meaning, including adding, revoking or re-dating any auditor key, changes it.
    Every response carries this hash, so an auditor can prove which policy answered.
    """

    version: int
    lab_name: str
    limits: Limits
    disclosure: Mapping[str, DisclosureLevel]
    """Default per-class disclosure (roles may override)."""
    roles: Mapping[str, Role]
    auditors: tuple[AuditorEntry, ...]
    policy_hash: str
    _keys: Mapping[tuple[str, str], RegisteredKey] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        index = {(k.auditor_id, k.key_id): k for a in self.auditors for k in a.keys}
        object.__setattr__(self, "_keys", MappingProxyType(index))

    # --- construction --------------------------------------------------------------------

    @classmethod
    def from_file(cls, path: Path) -> Policy:
        """Read, validate and resolve a policy file and its auditor registry.

        Args:
            path: The policy YAML. A relative ``auditor_registry:`` is resolved against
                this file's directory.

        Returns:
            The policy.

        Raises:
            PolicyError: Either file is unreadable, not YAML, or invalid; the message names
                the file and field path of the first few problems (all are collected and
                sorted first).
        """
        path = Path(path)
        return cls.from_yaml(
            _read_text(path, path.name, None), source=str(path), base_dir=path.parent
        )

    @classmethod
    def from_yaml(
        cls, text: str, *, source: str = "<policy>", base_dir: Path | None = None
    ) -> Policy:
        """Validate and resolve a policy given as YAML text.

        Args:
            text: The policy document.
            source: Name used in error messages (usually the file path).
            base_dir: Directory a relative ``auditor_registry:`` is resolved against;
                ``None`` forbids a separate registry (it must then be inline).

        Returns:
            The policy.

        Raises:
            PolicyError: The document or its registry is invalid (see :meth:`from_file`).
        """
        doc = load_yaml(text, source, PolicyError)
        _raise_if(_schema_errors(POLICY_SCHEMA, doc, source))
        return _build(cast(dict[str, Any], doc), source, base_dir)

    # --- queries -------------------------------------------------------------------------

    def find_key(self, auditor_id: str, key_id: str) -> RegisteredKey | None:
        """Look up a registered key, including revoked and expired ones.

        Args:
            auditor_id: The id the request claims.
            key_id: The key id the request claims.

        Returns:
            The key if that auditor registered it, else ``None`` (a key registered by a
            different auditor is not found: ids and keys must match together).
        """
        return self._keys.get((auditor_id, key_id))

    def role(self, name: str) -> Role:
        """The role called ``name``.

        Raises:
            PolicyError: No such role (every registered auditor's role exists, so this
                means a caller passed a name that did not come from this policy).
        """
        try:
            return self.roles[name]
        except KeyError:
            raise PolicyError(f"no role named {name!r} in this policy") from None

    def disclosure_for(self, role: str, data_class: str) -> DisclosureLevel:
        """What a result of ``data_class`` may reveal to ``role``.

        An unknown data class yields ``"none"``: anything the policy does not describe is
        hidden, so a new class added to a corpus fails closed.

        Raises:
            PolicyError: ``role`` is not a role of this policy.
        """
        return self.role(role).disclosure.get(data_class, "none")

    def hidden_classes(self, role: str) -> frozenset[str]:
        """Data classes ``role`` may not see at all; the service excludes them before ranking.

        Always contains ``"private"``.

        Raises:
            PolicyError: ``role`` is not a role of this policy.
        """
        levels = self.role(role).disclosure
        return frozenset(c for c in DATA_CLASSES if levels.get(c, "none") == "none")

    def hidden_from_some_role(self) -> frozenset[str]:
        """Data classes at least one role may not see (always ``private``).

        The attribution index's preconditioner and quantizers must be fitted without them,
        or their rows would shape answers given to a role that may not know they exist.
        """
        return frozenset(c for name in self.roles for c in self.hidden_classes(name))

    def generation_withheld_classes(self, role: str) -> frozenset[str]:
        """Data classes whose training text ``role``'s Generate calls may not reproduce.

        The hidden classes, plus ``proprietary`` where the role's ``generate_proprietary`` is
        ``withhold``.
        """
        hidden = self.hidden_classes(role)
        if self.role(role).generate_proprietary == "withhold":
            return hidden | {"proprietary"}
        return hidden


# ---------------------------------------------------------------------------- YAML


def _read_text(path: Path, source: str, field_path: str | None) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        problem = f"file not found: {path}"
    except UnicodeDecodeError:
        problem = f"{path} is not UTF-8 text"
    except OSError as exc:
        problem = f"cannot read {path}: {exc.strerror}"
    where = f"{field_path}: " if field_path else ""
    raise PolicyError(f"{source}: {where}{problem}")


# ---------------------------------------------------------------------------- errors

_Problem = Problem
"""(file, dotted field path, message); sorted and formatted by :func:`_raise_if`."""


def _raise_if(problems: list[_Problem]) -> None:
    raise_problems(problems, PolicyError, limit=MAX_REPORTED_ERRORS)


def _schema_errors(schema: dict[str, Any], doc: object, source: str) -> list[_Problem]:
    validator = Draft202012Validator(schema)
    problems: list[_Problem] = []
    for error in validator.iter_errors(doc):
        problems.extend(_describe(error, source))
    return problems


def _describe(error: ValidationError, source: str) -> Iterator[_Problem]:
    """Policy-specific wording for invalid names; the rest as every config file."""
    if "propertyNames" in error.schema_path:
        yield (
            source,
            join(dotted(error.absolute_path), str(error.instance)),
            ("invalid name (use lower_snake_case: a-z, 0-9, _; starting with a letter)"),
        )
    else:
        for path, message in describe(error):
            yield source, path, message


# ---------------------------------------------------------------------------- building


def _build(doc: dict[str, Any], source: str, base_dir: Path | None) -> Policy:
    problems: list[_Problem] = []

    default_overrides = cast(dict[str, str], doc.get("disclosure", {}))
    if default_overrides.get("private", "none") != "none":
        problems.append((source, "disclosure.private", _PRIVATE_REASON))
    default = {**DEFAULT_DISCLOSURE, **default_overrides}

    roles: dict[str, Role] = {}
    for name, spec in cast(dict[str, dict[str, Any]], doc["roles"]).items():
        overrides = cast(dict[str, str], spec.get("disclosure", {}))
        if overrides.get("private", "none") != "none":
            problems.append((source, f"roles.{name}.disclosure.private", _PRIVATE_REASON))
        levels: dict[str, DisclosureLevel] = {
            c: cast(DisclosureLevel, overrides.get(c, default[c])) for c in DATA_CLASSES
        }
        levels["private"] = "none"
        roles[name] = Role(
            name=name,
            methods=frozenset(spec["methods"]),
            max_top_k=spec["max_top_k"],
            daily_queries=spec["daily_queries"],
            max_new_tokens=spec["max_new_tokens"],
            withheld_budget=spec.get("withheld_budget", 20),
            generate_proprietary=spec.get("generate_proprietary", "allow"),
            disclosure=MappingProxyType(levels),
        )

    raw_auditors, auditors_source, auditors_path = _registry(doc, source, base_dir, problems)
    auditors = _auditors(raw_auditors, auditors_source, auditors_path, roles, problems)
    _raise_if(problems)

    limits = Limits(**cast(dict[str, int], doc.get("limits", {})))
    default["private"] = "none"
    resolved: dict[str, DisclosureLevel] = {
        c: cast(DisclosureLevel, default[c]) for c in DATA_CLASSES
    }
    resolved_default = MappingProxyType(resolved)
    canonical = {
        "version": doc["version"],
        "lab": {"name": doc["lab"]["name"]},
        "limits": {
            "timestamp_window_s": limits.timestamp_window_s,
            "max_request_bytes": limits.max_request_bytes,
            "max_batch_items": limits.max_batch_items,
            "max_prompt_chars": limits.max_prompt_chars,
            "snippet_chars": limits.snippet_chars,
            "max_concurrent_per_auditor": limits.max_concurrent_per_auditor,
            "call_deadline_s": limits.call_deadline_s,
            "unauthenticated_per_minute": limits.unauthenticated_per_minute,
        },
        "disclosure": dict(resolved_default),
        "roles": {
            r.name: {
                "methods": sorted(r.methods),
                "max_top_k": r.max_top_k,
                "daily_queries": r.daily_queries,
                "max_new_tokens": r.max_new_tokens,
                "withheld_budget": r.withheld_budget,
                "generate_proprietary": r.generate_proprietary,
                "disclosure": dict(r.disclosure),
            }
            for r in roles.values()
        },
        "auditors": [
            {
                "id": a.id,
                "role": a.role,
                "keys": [
                    {
                        "key": k.key_text,
                        "expires": k.expires.isoformat() if k.expires else None,
                        "revoked": k.revoked,
                        "revoked_reason": k.revoked_reason,
                    }
                    for k in a.keys
                ],
            }
            for a in auditors
        ],
    }
    encoded = json.dumps(canonical, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return Policy(
        version=doc["version"],
        lab_name=doc["lab"]["name"],
        limits=limits,
        disclosure=resolved_default,
        roles=MappingProxyType(roles),
        auditors=auditors,
        policy_hash=hashlib.sha256(encoded.encode("utf-8")).hexdigest(),
    )


def _registry(
    doc: dict[str, Any], source: str, base_dir: Path | None, problems: list[_Problem]
) -> tuple[list[dict[str, Any]], str, str]:
    """Return the raw auditor list, the file it came from, and its path prefix there."""
    has_file, has_inline = "auditor_registry" in doc, "auditors" in doc
    if has_file == has_inline:
        problems.append(
            (
                source,
                "auditor_registry",
                "give exactly one of auditor_registry (a file) or auditors (an inline list)",
            )
        )
        return [], source, "auditors"
    if has_inline:
        return cast(list[dict[str, Any]], doc["auditors"]), source, "auditors"
    if base_dir is None:
        problems.append(
            (
                source,
                "auditor_registry",
                "a separate registry needs a policy file; list auditors inline",
            )
        )
        return [], source, "auditors"
    reg_path = base_dir / cast(str, doc["auditor_registry"])
    text = _read_text(reg_path, source, "auditor_registry")
    reg_source = str(reg_path)
    registry = load_yaml(text, reg_source, PolicyError)
    errors = _schema_errors(REGISTRY_SCHEMA, registry, reg_source)
    if errors:
        problems.extend(errors)
        return [], reg_source, "auditors"
    return cast(dict[str, list[dict[str, Any]]], registry)["auditors"], reg_source, "auditors"


def _auditors(
    raw: list[dict[str, Any]],
    source: str,
    prefix: str,
    roles: Mapping[str, Role],
    problems: list[_Problem],
) -> tuple[AuditorEntry, ...]:
    entries: list[AuditorEntry] = []
    ids: dict[str, int] = {}
    key_owners: dict[str, str] = {}
    for i, spec in enumerate(raw):
        where = f"{prefix}[{i}]"
        auditor_id, role = cast(str, spec["id"]), cast(str, spec["role"])
        if auditor_id in ids:
            first = f"{prefix}[{ids[auditor_id]}]"
            problems.append(
                (source, f"{where}.id", f"duplicate auditor id {auditor_id!r} (first at {first})")
            )
        else:
            ids[auditor_id] = i
        if role not in roles:
            problems.append(
                (
                    source,
                    f"{where}.role",
                    f"unknown role {role!r} (defined: {', '.join(sorted(roles))})",
                )
            )
        keys: list[RegisteredKey] = []
        for j, key_spec in enumerate(cast(list[dict[str, Any]], spec["keys"])):
            key_where = f"{where}.keys[{j}]"
            try:
                public_key = decode_public_key(cast(str, key_spec["key"]))
            except (KeyFileError, ValueError) as exc:
                problems.append((source, f"{key_where}.key", f"not a valid Ed25519 key: {exc}"))
                continue
            text = encode_public_key(public_key)
            if text in key_owners:
                problems.append(
                    (
                        source,
                        f"{key_where}.key",
                        f"key already registered at {key_owners[text]}; "
                        "a key may be registered only once",
                    )
                )
                continue
            key_owners[text] = key_where
            expires: datetime | None = None
            if "expires" in key_spec:
                try:
                    expires = _parse_expires(cast(str, key_spec["expires"]))
                except ValueError:
                    problems.append(
                        (
                            source,
                            f"{key_where}.expires",
                            f"{key_spec['expires']!r} is not a date (YYYY-MM-DD) or "
                            "ISO 8601 date-time",
                        )
                    )
                    continue
            keys.append(
                RegisteredKey(
                    auditor_id=auditor_id,
                    role=role,
                    public_key=public_key,
                    key_id=compute_key_id(public_key),
                    key_text=text,
                    expires=expires,
                    revoked=bool(key_spec.get("revoked", False)),
                    revoked_reason=cast("str | None", key_spec.get("revoked_reason")),
                )
            )
        keys.sort(key=lambda k: k.key_text)
        entries.append(AuditorEntry(id=auditor_id, role=role, keys=tuple(keys)))
    entries.sort(key=lambda a: a.id)
    return tuple(entries)


_BARE_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")


def _parse_expires(text: str) -> datetime:
    """Parse an expiry: a bare date means the end of that day, UTC; a naive time is UTC.

    Naive times are UTC because that is what YAML's own timestamp type specifies.

    Raises:
        ValueError: Not a date or ISO 8601 date-time.
    """
    text = text.strip()
    if _BARE_DATE.match(text):
        return datetime.combine(date.fromisoformat(text), time.max, tzinfo=UTC)
    parsed = datetime.fromisoformat(text)
    if parsed.tzinfo is None:
        return parsed.replace(tzinfo=UTC)
    return parsed.astimezone(UTC)
