"""The campaign file: what to probe, against which lab, as whom, and where results go.

A campaign is one YAML file (shape in :data:`CAMPAIGN_SCHEMA`). :meth:`Campaign.from_file`
parses and validates it in one step; everything else trusts the resulting frozen object.

Validation is strict for the same reason the lab's policy is: a misspelt field must not
silently fall back to a default (an auditor who wrote ``concurency: 1`` to spare a lab must
not run 4 probes in flight), so unknown fields are errors, and every problem names the file
and the dotted field path. All problems are collected and sorted before raising, so one run
shows everything to fix. Each suite's own section is only required to be a mapping here;
its content is validated by the suite when it plans its probes.

Paths in the file are relative to the file's directory, so a campaign can be shipped next
to the probe files it names and run from anywhere. Nothing here touches the network or the
files the campaign names (keys, certificates): a shipped campaign can be planned before its
keys exist, and command-line overrides replace those paths before anything reads them.

The files the *suites* read (references, templates, prompts) are read through
:class:`CampaignFiles`, which records each one: the campaign hash covers them and the
report carries them, so a verifier plans the campaign again, offline, from the report alone.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any, Final, cast

from jsonschema import Draft202012Validator, ValidationError

from auditor_client.configfile import describe, dotted, load_yaml, raise_problems
from auditor_client.errors import CampaignError
from auditor_client.keys import KeyFileError, decode_public_key

__all__ = [
    "CAMPAIGN_SCHEMA",
    "DEFAULT_CONCURRENCY",
    "DEFAULT_SEED",
    "MAX_CONCURRENCY",
    "SUITE_NAMES",
    "AuditorSettings",
    "Campaign",
    "CampaignFiles",
    "ServerSettings",
    "canonical_json",
    "file_sha256",
]

SUITE_NAMES: Final = ("bias", "copyright", "privacy", "toxicity")
"""Suite sections a campaign may have (each optional; at least one)."""

DEFAULT_CONCURRENCY: Final = 4
"""Probes in flight when the file does not say: enough to hide round trips, few enough
that one auditor does not monopolise a small lab's concurrent-RPC cap."""

MAX_CONCURRENCY: Final = 32
"""Upper bound on ``concurrency``: more only queues requests on the lab's side."""

DEFAULT_SEED: Final = 0
"""Seed the suites plan with when the file does not say (plans must be reproducible)."""

MAX_REPORTED_ERRORS: Final = 8
"""How many problems one :class:`CampaignError` lists before saying "and N more"."""

_PUBLIC_KEY_PATTERN = r"^ed25519:[A-Za-z0-9+/]{43}=$"

_PATH = {"type": "string", "minLength": 1, "maxLength": 4096}

CAMPAIGN_SCHEMA: Final[dict[str, Any]] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "additionalProperties": False,
    "required": ["version", "name", "server", "auditor", "suites"],
    "properties": {
        "version": {"const": 1},
        "name": {
            "type": "string",
            "pattern": r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$",
        },
        "server": {
            "type": "object",
            "additionalProperties": False,
            "required": ["address"],
            "properties": {
                "address": {
                    "type": "string",
                    "pattern": r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+):[0-9]{1,5}$",
                },
                "tls_ca": _PATH,
                "tls_cert": _PATH,
                "tls_key": _PATH,
                "server_name": {"type": "string", "minLength": 1, "maxLength": 253},
                "insecure": {"type": "boolean"},
            },
        },
        "lab_key": {"type": "string", "pattern": _PUBLIC_KEY_PATTERN},
        "lab_key_file": _PATH,
        "auditor": {
            "type": "object",
            "additionalProperties": False,
            "required": ["key_dir"],
            "properties": {
                "key_dir": _PATH,
                "id": {"type": "string", "pattern": r"^[\x21-\x7e]{1,256}$"},
            },
        },
        "output": _PATH,
        "concurrency": {"type": "integer", "minimum": 1, "maximum": MAX_CONCURRENCY},
        "seed": {"type": "integer", "minimum": 0, "maximum": 2**63 - 1},
        "suites": {
            "type": "object",
            "additionalProperties": False,
            "minProperties": 1,
            "properties": {name: {"type": "object"} for name in SUITE_NAMES},
        },
    },
}
"""JSON Schema (Draft 2020-12) of a campaign file; cross-field rules are in :func:`_rules`."""


@dataclass(frozen=True, slots=True, kw_only=True)
class ServerSettings:
    """How to reach the lab (the ``server:`` block), paths already resolved."""

    address: str
    """``host:port`` of the lab's audit service."""
    insecure: bool = False
    """Plain-text gRPC (tests and local demos only); otherwise TLS."""
    tls_ca: Path | None = None
    """CA that signed the server certificate; ``None`` with TLS means the system roots."""
    tls_cert: Path | None = None
    """Client certificate for mutual TLS (always together with :attr:`tls_key`)."""
    tls_key: Path | None = None
    """Client private key for mutual TLS."""
    server_name: str | None = None
    """Name checked against the server certificate when it differs from the address."""


@dataclass(frozen=True, slots=True, kw_only=True)
class AuditorSettings:
    """Who runs the campaign (the ``auditor:`` block)."""

    key_dir: Path
    """Directory holding ``auditor.key`` (and ``auditor.id`` when :attr:`id` is None)."""
    id: str | None = None
    """Auditor id as the lab registered it; ``None``: read from the key directory."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Campaign:
    """A validated campaign. Build it with :meth:`from_file` or :meth:`from_yaml`.

    :attr:`document` is the validated document with defaults filled in, exactly as
    written otherwise (paths stay relative): it is what the campaign hash covers, so moving
    the campaign directory or overriding the server on the command line does not change the
    hash, while any change of what the file says does.
    """

    path: Path
    """The campaign file."""
    base_dir: Path
    """Directory relative paths in the file (and in suite sections) are resolved against."""
    name: str
    server: ServerSettings
    lab_key: str | None
    """The lab's public key, ``ed25519:<base64>``, when given inline."""
    lab_key_file: Path | None
    """A file holding the lab's public key, when given that way (read when connecting)."""
    auditor: AuditorSettings
    output: Path | None
    """Default output directory (``--out`` overrides it)."""
    concurrency: int
    seed: int
    suites: Mapping[str, Mapping[str, Any]]
    """Each present suite's section, unvalidated (the suite validates it when planning)."""
    document: Mapping[str, Any]
    """The validated document with defaults filled in (what the campaign hash covers)."""
    file_sha256: str
    """Hex SHA-256 of the file's bytes, recorded so a report names the exact file."""
    text: str
    """The file's text as read; a report carries it so a verifier can plan it again."""

    # --- construction ----------------------------------------------------------------------

    @classmethod
    def from_file(cls, path: Path) -> Campaign:
        """Read and validate a campaign file.

        Raises:
            CampaignError: The file is unreadable, not YAML, or invalid; the message names
                the file and the dotted field path of each problem (sorted).
        """
        path = Path(path)
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            raise CampaignError(f"{path}: file not found") from None
        except OSError as exc:
            raise CampaignError(f"{path}: cannot read: {exc.strerror}") from None
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise CampaignError(f"{path}: not UTF-8 text") from None
        return cls.from_yaml(
            text,
            source=str(path),
            path=path,
            file_sha256=hashlib.sha256(raw).hexdigest(),
        )

    @classmethod
    def from_yaml(
        cls,
        text: str,
        *,
        source: str = "<campaign>",
        path: Path | None = None,
        file_sha256: str | None = None,
    ) -> Campaign:
        """Validate a campaign given as YAML text.

        Args:
            text: The campaign document.
            source: Name used in error messages (usually the file path).
            path: Where the document lives; its directory is the base for relative paths
                (the current directory when ``None``).
            file_sha256: Hash of the file's bytes; computed from ``text`` when ``None``.

        Raises:
            CampaignError: See :meth:`from_file`.
        """
        doc = load_yaml(text, source, CampaignError)
        problems = list(_schema_errors(doc))
        if not problems:
            problems.extend(_rules(cast(dict[str, Any], doc)))
        raise_problems(
            ((source, field, msg) for field, msg in problems),
            CampaignError,
            limit=MAX_REPORTED_ERRORS,
        )
        assert isinstance(doc, dict)
        campaign_path = (path if path is not None else Path(source)).absolute()
        base = campaign_path.parent
        server_doc = cast(dict[str, Any], doc["server"])
        auditor_doc = cast(dict[str, Any], doc["auditor"])
        complete = {**doc, "concurrency": doc.get("concurrency", DEFAULT_CONCURRENCY)}
        complete["seed"] = doc.get("seed", DEFAULT_SEED)
        complete["server"] = {"insecure": False, **server_doc}
        return cls(
            path=campaign_path,
            base_dir=base,
            name=str(doc["name"]),
            server=ServerSettings(
                address=str(server_doc["address"]),
                insecure=bool(server_doc.get("insecure", False)),
                tls_ca=_resolve(base, server_doc.get("tls_ca")),
                tls_cert=_resolve(base, server_doc.get("tls_cert")),
                tls_key=_resolve(base, server_doc.get("tls_key")),
                server_name=server_doc.get("server_name"),
            ),
            lab_key=doc.get("lab_key"),
            lab_key_file=_resolve(base, doc.get("lab_key_file")),
            auditor=AuditorSettings(
                key_dir=base / str(auditor_doc["key_dir"]), id=auditor_doc.get("id")
            ),
            output=_resolve(base, doc.get("output")),
            concurrency=int(complete["concurrency"]),
            seed=int(complete["seed"]),
            suites=MappingProxyType(
                {k: MappingProxyType(dict(v)) for k, v in sorted(doc["suites"].items())}
            ),
            document=MappingProxyType(complete),
            file_sha256=file_sha256 or hashlib.sha256(text.encode("utf-8")).hexdigest(),
            text=text,
        )

    # --- overrides -------------------------------------------------------------------------

    def with_overrides(
        self,
        *,
        server: str | None = None,
        lab_key: str | None = None,
        key_dir: Path | None = None,
        auditor_id: str | None = None,
        tls_ca: Path | None = None,
        tls_cert: Path | None = None,
        tls_key: Path | None = None,
        insecure: bool = False,
    ) -> Campaign:
        """This campaign with connection settings replaced (command-line options).

        Overrides never touch :attr:`document`, so the campaign hash (and with it
        ``--resume``) is the same whichever port or key path a run was pointed at.

        Args:
            server: ``host:port`` replacing ``server.address``.
            lab_key: ``ed25519:<base64>``, or a file holding it.
            key_dir: Replaces ``auditor.key_dir``.
            auditor_id: Replaces ``auditor.id``.
            tls_ca: Use TLS with this CA (turns ``insecure`` off).
            tls_cert: Client certificate for mutual TLS (with ``tls_key``).
            tls_key: Client key for mutual TLS.
            insecure: Plain-text gRPC (drops every TLS setting).

        Raises:
            CampaignError: Contradictory overrides (``insecure`` with TLS files), a
                malformed address, or a malformed lab key.
        """
        if insecure and (tls_ca or tls_cert or tls_key):
            raise CampaignError("--insecure cannot be combined with --tls-ca/--tls-cert/--tls-key")
        if (tls_cert is None) != (tls_key is None):
            raise CampaignError("--tls-cert and --tls-key go together (mutual TLS)")
        srv = self.server
        if server is not None:
            address_schema = CAMPAIGN_SCHEMA["properties"]["server"]["properties"]["address"]
            if not re.match(address_schema["pattern"], server):
                raise CampaignError(f"--server: {server!r} is not host:port")
            srv = dataclasses.replace(srv, address=server)
        if insecure:
            srv = dataclasses.replace(srv, insecure=True, tls_ca=None, tls_cert=None, tls_key=None)
        elif tls_ca or tls_cert:
            srv = dataclasses.replace(
                srv,
                insecure=False,
                tls_ca=tls_ca or srv.tls_ca,
                tls_cert=tls_cert or srv.tls_cert,
                tls_key=tls_key or srv.tls_key,
            )
        campaign = dataclasses.replace(self, server=srv)
        if lab_key is not None:
            if lab_key.startswith("ed25519:"):
                _check_public_key(lab_key, "--lab-key")
                campaign = dataclasses.replace(campaign, lab_key=lab_key, lab_key_file=None)
            else:
                campaign = dataclasses.replace(campaign, lab_key=None, lab_key_file=Path(lab_key))
        if key_dir is not None or auditor_id is not None:
            campaign = dataclasses.replace(
                campaign,
                auditor=AuditorSettings(
                    key_dir=key_dir if key_dir is not None else self.auditor.key_dir,
                    # A new key directory carries its own auditor.id; keep the file's id
                    # only when the key directory is the file's too.
                    id=auditor_id or (self.auditor.id if key_dir is None else None),
                ),
            )
        return campaign

    # --- queries ---------------------------------------------------------------------------

    def lab_public_key(self) -> str:
        """The lab's public key text, reading :attr:`lab_key_file` if that is how it was given.

        Raises:
            CampaignError: The file is unreadable or does not hold an ``ed25519:`` key.
        """
        if self.lab_key is not None:
            return self.lab_key
        assert self.lab_key_file is not None
        where = f"{self.path}: lab_key_file"
        try:
            text = self.lab_key_file.read_text(encoding="ascii").strip()
        except FileNotFoundError:
            raise CampaignError(f"{where}: file not found: {self.lab_key_file}") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise CampaignError(f"{where}: cannot read {self.lab_key_file}: {exc}") from None
        _check_public_key(text, where)
        return text


# ---------------------------------------------------------------------------- suite files


class CampaignFiles:
    """The files a campaign's suites read while planning, by the name the campaign gives each.

    Suites read every file through one of these and never open paths themselves, so the
    runner knows exactly which files, and which bytes, a plan came from: it hashes them into
    the campaign hash and carries them in the report. A verifier plans the same campaign
    again from those carried copies (:meth:`carried`) with the same planning code, so it
    does not have to trust a single probe input the report states.

    A name is the string as written in the campaign (``copyright_references.jsonl``),
    relative to the campaign file's directory unless absolute; that string is the key in
    :attr:`read` and in a report's ``campaign.files``.
    """

    def __init__(
        self,
        *,
        base_dir: Path | None,
        carried: Mapping[str, str] | None,
        where: str = "campaign.files",
    ) -> None:
        self._base_dir = base_dir
        self._carried = carried
        self._where = where
        self._read: dict[str, str] = {}

    @classmethod
    def on_disk(cls, base_dir: Path) -> CampaignFiles:
        """Files read from disk, relative to ``base_dir`` (the campaign file's directory)."""
        return cls(base_dir=base_dir, carried=None)

    @classmethod
    def from_report(cls, texts: Mapping[str, str], *, where: str) -> CampaignFiles:
        """Only the copies a report carries (``where`` names them in error messages)."""
        return cls(base_dir=None, carried=dict(texts), where=where)

    def label(self, name: str) -> str:
        """How messages name the file: its path on disk, or its entry in the report."""
        if self._carried is not None:
            return f"{self._where}[{json.dumps(name)}]"
        return str(self._path(name))

    def read_text(self, name: str) -> str:
        """The file's text (UTF-8), recorded in :attr:`read`.

        Raises:
            FileNotFoundError: No such file (on disk, or among the carried copies).
            OSError, UnicodeDecodeError: It cannot be read as UTF-8 text.
        """
        known = self._read.get(name)
        if known is not None:
            return known
        if self._carried is not None:
            if name not in self._carried:
                raise FileNotFoundError(name)
            text = self._carried[name]
        else:
            path = self._path(name)
            if not path.is_file():
                raise FileNotFoundError(str(path))
            text = path.read_bytes().decode("utf-8")
        self._read[name] = text
        return text

    @property
    def read(self) -> Mapping[str, str]:
        """Every file read so far: name -> text, sorted by name."""
        return MappingProxyType(dict(sorted(self._read.items())))

    def _path(self, name: str) -> Path:
        path = Path(name)
        if path.is_absolute() or self._base_dir is None:
            return path
        return self._base_dir / path


def file_sha256(text: str) -> str:
    """Hex SHA-256 of a carried file's UTF-8 bytes (how the campaign hash names it)."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


# ---------------------------------------------------------------------------- helpers


def canonical_json(obj: object) -> bytes:
    """Sorted keys, no whitespace, UTF-8: one byte string per value, for hashing.

    Raises:
        TypeError: ``obj`` holds something JSON cannot encode.
        ValueError: ``obj`` holds NaN or infinity (which JSON does not have).
    """
    return json.dumps(
        obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode("utf-8")


def _resolve(base: Path, value: object) -> Path | None:
    return None if value is None else base / str(value)


def _check_public_key(text: str, where: str) -> None:
    try:
        decode_public_key(text)
    except KeyFileError as exc:
        raise CampaignError(f"{where}: {exc}") from None


_Problem = tuple[str, str]
"""(dotted field path, message); the campaign file is the source of every one."""


def _schema_errors(doc: object) -> Iterator[_Problem]:
    for error in Draft202012Validator(CAMPAIGN_SCHEMA).iter_errors(doc):
        yield from _describe(error)


def _describe(error: ValidationError) -> Iterator[_Problem]:
    """Campaign-specific wording for a few schema errors; the rest as every config file."""
    path = dotted(error.absolute_path)
    if error.validator == "minProperties" and path == "suites":
        yield path, f"name at least one suite ({', '.join(SUITE_NAMES)})"
    elif error.validator == "pattern" and path == "server.address":
        yield path, f"{error.instance!r} is not host:port"
    elif error.validator == "pattern" and path == "lab_key":
        yield path, "not an Ed25519 public key (ed25519:<base64 of 32 bytes>)"
    else:
        yield from describe(error)


def _rules(doc: dict[str, Any]) -> Iterator[_Problem]:
    """Cross-field rules a schema would state only with unreadable ``oneOf`` errors."""
    has_key, has_file = "lab_key" in doc, "lab_key_file" in doc
    if has_key == has_file:
        yield "lab_key", "give exactly one of lab_key (ed25519:...) or lab_key_file"
    if has_key:
        try:
            decode_public_key(doc["lab_key"])
        except KeyFileError as exc:
            yield "lab_key", str(exc)
    server = cast(dict[str, Any], doc["server"])
    tls_fields = [f for f in ("tls_ca", "tls_cert", "tls_key", "server_name") if f in server]
    if server.get("insecure", False) and tls_fields:
        for f in tls_fields:
            yield f"server.{f}", "not allowed with insecure: true"
    if ("tls_cert" in server) != ("tls_key" in server):
        missing = "tls_key" if "tls_cert" in server else "tls_cert"
        yield f"server.{missing}", "missing (tls_cert and tls_key go together: mutual TLS)"
