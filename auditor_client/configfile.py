"""Strict YAML and JSON-Schema problems named by field path, for every hand-written config.

The lab's policy and the auditor's campaign files are written by people and read by
programs that must not guess: a repeated key (YAML would silently keep the last one), a date
that YAML turns into midnight, a misspelt field. Both sides load them the same way and
report every problem at once as ``file: dotted.field[2].path: message``; this module is that
one way (the lab's policy loader imports it, as it may import the protocol's other shared
pieces).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from typing import Any, cast

import yaml
from jsonschema import ValidationError

Problem = tuple[str, str, str]
"""(file, dotted field path, message)."""


class _DuplicateKeyError(yaml.MarkedYAMLError):
    """A mapping repeats a key; YAML would silently keep the last one."""


class StrictLoader(yaml.SafeLoader):
    """Safe loader that rejects duplicate keys and keeps timestamps as strings.

    Timestamps stay the text that was written, so they are validated (and reported) like any
    other field and a bare date is never silently turned into midnight.
    """

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        self.flatten_mapping(node)
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise _DuplicateKeyError(
                    None, None, f"key {key!r} appears more than once", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


StrictLoader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:timestamp"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}


def load_yaml(text: str, source: str, error: type[Exception]) -> object:
    """Parse ``text`` with :class:`StrictLoader`.

    Raises:
        error: ``source: not valid YAML: line L, column C: problem``.
    """
    try:
        return yaml.load(text, Loader=StrictLoader)  # noqa: S506 (a SafeLoader subclass)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        raise error(f"{source}: not valid YAML: {where}{exc.problem}") from None
    except yaml.YAMLError as exc:
        raise error(f"{source}: not valid YAML: {exc}") from None


def dotted(parts: Iterable[str | int], prefix: str = "") -> str:
    """``("roles", "x", "methods", 2)`` -> ``roles.x.methods[2]`` (after ``prefix``, if any)."""
    out = prefix
    for part in parts:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


def join(path: str, name: str) -> str:
    """The field ``name`` under ``path`` (``path`` may be the top level, "")."""
    return f"{path}.{name}" if path else name


def describe(error: ValidationError) -> Iterator[tuple[str, str]]:
    """One jsonschema error as (field path, message) pairs that each name the field.

    A missing field is named as the field itself (not its parent), and each unexpected field
    separately, with the allowed names.
    """
    path = dotted(error.absolute_path)
    instance: Any = error.instance
    if error.validator == "required" and isinstance(instance, dict):
        match = re.match(r"^'(.+)' is a required property$", error.message)
        yield join(path, match.group(1) if match else "?"), "missing (required)"
    elif error.validator == "additionalProperties" and isinstance(instance, dict):
        allowed = sorted(cast(dict[str, Any], error.schema).get("properties", {}))
        for extra in sorted(set(map(str, instance)) - set(allowed)):
            yield join(path, extra), f"unexpected field (allowed: {', '.join(allowed)})"
    else:
        yield path, error.message


def raise_problems(problems: Iterable[Problem], error: type[Exception], *, limit: int) -> None:
    """Raise ``error`` listing every problem, sorted, one per line (at most ``limit`` lines).

    Does nothing when there are none.
    """
    lines = [f"{src}: {path or '(top level)'}: {msg}" for src, path, msg in sorted(set(problems))]
    if not lines:
        return
    shown = lines[:limit]
    if len(lines) > len(shown):
        shown.append(f"(and {len(lines) - len(shown)} more problems)")
    raise error("\n".join(shown))
