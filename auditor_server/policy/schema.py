"""JSON Schemas (Draft 2020-12) for the policy file and the auditor registry.

The schemas check *shape* (types, ranges, allowed names, no unknown fields anywhere, so a
misspelt ``max_top_k`` is an error rather than a silently ignored line). Cross-field rules
(roles that exist, unique ids and keys, decodable keys, ``private`` never disclosed) need
the whole document and live in :mod:`auditor_server.policy.model`.
"""

from __future__ import annotations

from typing import Any, Final

__all__ = [
    "DISCLOSURE_LEVELS",
    "METHODS",
    "POLICY_SCHEMA",
    "REGISTRY_SCHEMA",
]

METHODS: Final[tuple[str, ...]] = (
    "WhoAmI",
    "GetPolicy",
    "Generate",
    "Score",
    "Attribute",
    "AttributeBatch",
    "GetTreeHead",
    "GetInclusionProof",
    "GetConsistencyProof",
)
"""Every RPC of ``auditor.v1.AuditService``; a role may only list these."""

DISCLOSURE_LEVELS: Final[tuple[str, ...]] = ("full_text", "snippet", "source_metadata", "none")
"""What a result may reveal, from most to least."""

_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
_ROLE_PATTERN = r"^[a-z][a-z0-9_]{0,63}$"

_LEVEL: dict[str, Any] = {"enum": list(DISCLOSURE_LEVELS)}

_DISCLOSURE: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "properties": {"public": _LEVEL, "proprietary": _LEVEL, "private": _LEVEL},
}

_LIMITS: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "timestamp_window_s": {"type": "integer", "minimum": 1, "maximum": 3600},
        "max_request_bytes": {"type": "integer", "minimum": 1024, "maximum": 16 * 1024 * 1024},
        "max_batch_items": {"type": "integer", "minimum": 1, "maximum": 1024},
        "max_prompt_chars": {"type": "integer", "minimum": 1, "maximum": 100_000},
        "snippet_chars": {"type": "integer", "minimum": 16, "maximum": 4000},
        "max_concurrent_per_auditor": {"type": "integer", "minimum": 1, "maximum": 256},
        "call_deadline_s": {"type": "integer", "minimum": 1, "maximum": 3600},
        "unauthenticated_per_minute": {"type": "integer", "minimum": 1, "maximum": 100_000},
    },
}

_ROLE: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["methods", "max_top_k", "daily_queries", "max_new_tokens"],
    "properties": {
        "methods": {
            "type": "array",
            "items": {"enum": list(METHODS)},
            "uniqueItems": True,
        },
        "max_top_k": {"type": "integer", "minimum": 1, "maximum": 1000},
        "daily_queries": {"type": "integer", "minimum": 0, "maximum": 10_000_000},
        "max_new_tokens": {"type": "integer", "minimum": 1, "maximum": 4096},
        "withheld_budget": {"type": "integer", "minimum": 0, "maximum": 1_000_000},
        "generate_proprietary": {"enum": ["allow", "withhold"]},
        "disclosure": _DISCLOSURE,
    },
}

_KEY: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["key"],
    "properties": {
        "key": {"type": "string", "minLength": 1},
        # YAML timestamps are loaded as strings (see model._Loader) and parsed after the
        # schema check, so a bad date is reported with its path like any other error.
        "expires": {"type": "string", "minLength": 1},
        "revoked": {"type": "boolean"},
        "revoked_reason": {"type": "string"},
    },
}

_AUDITOR: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["id", "role", "keys"],
    "properties": {
        "id": {"type": "string", "pattern": _NAME_PATTERN},
        "role": {"type": "string", "minLength": 1},
        "keys": {"type": "array", "minItems": 1, "items": _KEY},
    },
}

_AUDITORS: dict[str, Any] = {"type": "array", "items": _AUDITOR}

POLICY_SCHEMA: Final[dict[str, Any]] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "additionalProperties": False,
    "required": ["version", "lab", "roles"],
    "properties": {
        "version": {"const": 1},
        "lab": {
            "type": "object",
            "additionalProperties": False,
            "required": ["name"],
            "properties": {"name": {"type": "string", "minLength": 1}},
        },
        "limits": _LIMITS,
        "disclosure": _DISCLOSURE,
        "roles": {
            "type": "object",
            "minProperties": 1,
            "propertyNames": {"pattern": _ROLE_PATTERN},
            "additionalProperties": _ROLE,
        },
        "auditor_registry": {"type": "string", "minLength": 1},
        "auditors": _AUDITORS,
    },
}
"""Shape of the policy file."""

REGISTRY_SCHEMA: Final[dict[str, Any]] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "additionalProperties": False,
    "required": ["auditors"],
    "properties": {"auditors": _AUDITORS},
}
"""Shape of a separate auditor registry file (``auditor_registry:`` in the policy)."""
