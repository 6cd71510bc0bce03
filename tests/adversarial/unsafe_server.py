"""Test-only launcher: the real audit server with some defences switched off.

``auditor-server serve`` always runs with every defence on and has no way to turn one off;
this module is the only place one is turned off, so the adversarial tests can show that the
attack a defence stops succeeds without it. It builds the service exactly as
``auditor_server.server.open_service`` does, except for ``defences``, and serves it with the
same options as ``auditor-server serve``'s defaults (worker threads, concurrent RPC cap).

    python -m tests.adversarial.unsafe_server --index DIR --policy FILE --lab-key DIR \\
        --state DIR [--port 0] --off withheld_guard [--off scrub_joined ...]

Prints the same JSON ``listening`` line as ``auditor-server serve``.

With ``verbatim_visible_only`` off, the server also needs private text in its verbatim index,
which ``auditor-server build`` never puts there: this launcher builds one over every class
into the state directory (``verbatim-all-classes``) and serves that.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import sys
from pathlib import Path

# As auditor_server.cli does before torch is imported (idle OpenMP threads spin otherwise).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def defence_names() -> tuple[str, ...]:
    from auditor_server.service import Defences

    return tuple(f.name for f in dataclasses.fields(Defences))


def serve_defaults() -> dict[str, object]:
    """``auditor-server serve``'s option defaults, read from the command itself."""
    from auditor_server.cli import serve

    return {p.name: p.default for p in serve.params if p.name}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--index", type=Path, required=True)
    parser.add_argument("--policy", type=Path, required=True)
    parser.add_argument("--lab-key", type=Path, required=True)
    parser.add_argument("--state", type=Path, required=True)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--off", action="append", default=[], choices=defence_names())
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )

    from auditor_server.attribution.engine import AttributionEngine
    from auditor_server.policy.model import Policy
    from auditor_server.security.lab_keys import load_lab_key
    from auditor_server.server import ServerOptions, serve
    from auditor_server.service import AuditService, Defences

    defaults = serve_defaults()
    if "fair_scheduling" in args.off:
        # Fair service includes serve's thread budget: before it, 8 worker threads and 32
        # concurrent RPCs, which unread streams could fill.
        defaults = {**defaults, "max_workers": 8, "max_concurrent_rpcs": 32}
    verbatim_dir = None
    if "verbatim_visible_only" in args.off:
        verbatim_dir = _verbatim_of_every_class(args.index, args.state)
    service = AuditService.open(
        engine=AttributionEngine.open(args.index),
        policy=Policy.from_file(args.policy),
        policy_path=args.policy,
        lab_key=load_lab_key(args.lab_key),
        state_dir=args.state,
        defences=Defences(**dict.fromkeys(args.off, False)),
        verbatim_dir=verbatim_dir,
    )
    print(f"unsafe server: defences off: {', '.join(args.off) or 'none'}", file=sys.stderr)
    serve(
        service,
        ServerOptions(
            host="127.0.0.1",
            port=args.port,
            tls=None,
            max_workers=int(defaults["max_workers"]),  # type: ignore[call-overload]
            max_concurrent_rpcs=int(defaults["max_concurrent_rpcs"]),  # type: ignore[call-overload]
        ),
    )


def _verbatim_of_every_class(index: Path, state: Path) -> Path:
    """A verbatim index of the index's catalog *with* its private records (test only)."""
    from auditor_server.attribution import layout
    from auditor_server.attribution.verbatim import VerbatimIndex
    from auditor_server.corpus.catalog import Catalog

    directory = state / "verbatim-all-classes"
    with Catalog.open(index / layout.CATALOG) as catalog:
        VerbatimIndex.build(
            ((i, r.source.data_class, r.text) for i, r in enumerate(catalog)),
            directory,
            corpus_id=catalog.manifest_hash,
            exclude=(),
        ).close()
    return directory


if __name__ == "__main__":
    main()
