"""Validating a suite's campaign section and the files it names, with precise error locations.

A campaign fails at plan time, before any query is spent, and every problem is named at
once: ``suites.copyright.top_k: ...`` for the campaign section, ``FILE:LINE: field: ...``
for a JSONL or YAML file the section points at.

Files are read through :class:`~auditor_client.campaign.model.CampaignFiles` only, never
from a path directly: that is what lets the campaign hash cover them and a verifier plan the
campaign again from the copies a report carries.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import jsonschema
import yaml

from auditor_client.campaign.model import CampaignFiles
from auditor_client.campaign.types import JSON
from auditor_client.configfile import dotted
from auditor_client.errors import CampaignError

PathParts = Sequence[str | int]


def field_path(prefix: str, parts: PathParts) -> str:
    """``suites.bias`` + ``("templates", 2, "id")`` -> ``suites.bias.templates[2].id``."""
    return dotted(parts, prefix)


def _problems(schema: Mapping[str, Any], instance: Any) -> Iterator[tuple[list[str | int], str]]:
    """Every schema violation as (path, message), with missing/unknown fields named exactly."""
    validator = jsonschema.Draft202012Validator(schema)
    for error in validator.iter_errors(instance):
        path: list[str | int] = list(error.absolute_path)
        if error.validator == "required" and isinstance(error.instance, Mapping):
            for name in error.validator_value:
                if name not in error.instance:
                    yield [*path, name], "required field is missing"
        elif error.validator == "additionalProperties" and isinstance(error.instance, Mapping):
            known = set(error.schema.get("properties", {}))
            for name in sorted(set(error.instance) - known):
                yield [*path, str(name)], "unknown field"
        else:
            yield path, error.message


def _dedupe(lines: Sequence[str]) -> list[str]:
    return sorted(dict.fromkeys(lines))


def check_section(suite: str, config: Any, schema: Mapping[str, Any]) -> JSON:
    """Validate ``suites.<suite>`` and fill in the schema's defaults.

    Raises:
        CampaignError: every problem, one per line, each naming ``suites.<suite>.<field>``.
    """
    prefix = f"suites.{suite}"
    problems = _dedupe([f"{field_path(prefix, p)}: {m}" for p, m in _problems(schema, config)])
    if problems:
        raise CampaignError("\n".join(problems))
    section: JSON = dict(config)
    for name, rule in schema.get("properties", {}).items():
        if name not in section and "default" in rule:
            section[name] = rule["default"]
    return section


PROMPT_ROW_SCHEMA: JSON = {
    "type": "object",
    "required": ["id", "prompt"],
    "additionalProperties": False,
    "properties": {
        "id": {"type": "string", "pattern": r"^[A-Za-z0-9][A-Za-z0-9._-]*$", "maxLength": 100},
        "prompt": {"type": "string", "minLength": 1, "pattern": r"\S"},
        "kind": {"type": "string"},
        "note": {"type": "string"},
    },
}
"""One line of a prompts file (the toxicity and privacy suites)."""


def sampled_prompts(
    suite: str, section: Mapping[str, Any], files: CampaignFiles
) -> Iterator[tuple[JSON, str, int, float]]:
    """``(row, probe_id, sample, temperature)`` for every prompt of the section's
    ``prompts`` file and every one of its ``samples``, in file order.

    ``samples`` > 1 draws several generations per prompt; that only makes sense with
    sampling, so ``temperature`` defaults to 0 (greedy) for one sample and 1.0 otherwise,
    and an explicit 0 with several samples is rejected (they would all be the same).

    Raises:
        CampaignError: several samples at temperature 0, or a bad prompts file.
    """
    samples = int(section["samples"])
    temperature = float(section.get("temperature", 0.0 if samples == 1 else 1.0))
    if samples > 1 and temperature == 0.0:
        raise CampaignError(
            f"suites.{suite}.temperature: several samples need temperature > 0 "
            "(greedy generations would all be identical)"
        )
    label, text = read_file(suite, "prompts", section["prompts"], files)
    for row in read_jsonl(label, text, PROMPT_ROW_SCHEMA):
        for sample in range(samples):
            probe_id = row["id"] if samples == 1 else f"{row['id']}/s{sample}"
            yield row, probe_id, sample, temperature


def read_file(suite: str, name: str, value: str, files: CampaignFiles) -> tuple[str, str]:
    """``(label, text)`` of the file the section's field ``name`` names (``value``).

    ``label`` is how messages name the file (its path, or its entry in a report).

    Raises:
        CampaignError: no such file, or it cannot be read as UTF-8 text.
    """
    label = files.label(value)
    try:
        return label, files.read_text(value)
    except FileNotFoundError:
        raise CampaignError(f"suites.{suite}.{name}: no such file: {label}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise CampaignError(f"{label}: cannot read: {exc}") from exc


def read_jsonl(path: str, text: str, schema: Mapping[str, Any], *, key: str = "id") -> list[JSON]:
    """Parse JSONL ``text`` (named ``path``), validating each line and unique ``key`` values.

    Blank lines are skipped (editors add them); anything else must be one JSON object.

    Raises:
        CampaignError: every bad line, as ``FILE:LINE: field: message``.
    """
    rows: list[JSON] = []
    problems: list[str] = []
    seen: dict[str, int] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            problems.append(f"{path}:{number}: not valid JSON: {exc.msg}")
            continue
        found = [
            f"{path}:{number}: {field_path('', p) or '(line)'}: {m}"
            for p, m in _problems(schema, obj)
        ]
        if found:
            problems.extend(_dedupe(found))
            continue
        ident = str(obj[key])
        if ident in seen:
            problems.append(
                f"{path}:{number}: {key}: duplicate {ident!r} (first on line {seen[ident]})"
            )
            continue
        seen[ident] = number
        rows.append(obj)
    if problems:
        raise CampaignError("\n".join(problems))
    if not rows:
        raise CampaignError(f"{path}: no entries")
    return rows


def _line_of(node: yaml.Node, parts: PathParts) -> int:
    """1-based line of the deepest node along ``parts`` (where the problem is, or its parent)."""
    for part in parts:
        child: yaml.Node | None = None
        if isinstance(node, yaml.MappingNode):
            for key_node, value_node in node.value:
                if key_node.value == part:
                    child = value_node
                    break
        elif (
            isinstance(node, yaml.SequenceNode)
            and isinstance(part, int)
            and 0 <= part < len(node.value)
        ):
            child = node.value[part]
        if child is None:
            break
        node = child
    return int(node.start_mark.line) + 1


def read_yaml(
    path: str, text: str, schema: Mapping[str, Any]
) -> tuple[JSON, Callable[[PathParts, str], str]]:
    """Parse and validate a YAML mapping (``text``, named ``path``); also return
    ``where(parts, msg)`` for later checks.

    ``where`` formats ``FILE:LINE: field: msg`` for a path in the document, so semantic
    checks after the schema (a group with no completion) point at the right line too.

    Raises:
        CampaignError: not YAML, not a mapping, or schema violations (all named).
    """
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise CampaignError(f"{path}: not valid YAML: {exc}") from exc
    if node is None or not isinstance(data, dict):
        raise CampaignError(f"{path}:1: the file must hold a mapping")
    root: yaml.Node = node

    def where(parts: PathParts, message: str) -> str:
        return f"{path}:{_line_of(root, parts)}: {field_path('', parts) or '(file)'}: {message}"

    problems = _dedupe([where(p, m) for p, m in _problems(schema, data)])
    if problems:
        raise CampaignError("\n".join(problems))
    return data, where
