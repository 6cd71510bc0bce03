"""``auditor-server``: the lab's command line.

Each command is a thin shell over a library function; errors the lab side raises on purpose
(:class:`~auditor_server.errors.SandboxError`) become one clear line on stderr and an exit
code that says who is at fault, never a traceback.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from auditor_server import __version__
from auditor_server.errors import ConfigError, InputError, IntegrityError, SandboxError

# torch and FAISS each load an OpenMP runtime whose idle threads busy-wait after every
# parallel region; on a small shared host that spinning starves the threads doing work
# (bench/README.md: attribute p50 2x and p90 5x slower, PQ training 2x slower). The runtimes
# read this once, when they load, so it is set here, before any command imports them; an
# explicit setting in the environment wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

F = TypeVar("F", bound=Callable[..., Any])

EXIT_CODES: tuple[tuple[type[SandboxError], int], ...] = (
    (InputError, 2),
    (ConfigError, 3),
    (IntegrityError, 4),
    (SandboxError, 1),
)


class _Group(click.Group):
    """Maps deliberate errors to one stderr line and an exit code."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except SandboxError as exc:
            code = next(c for cls, c in EXIT_CODES if isinstance(exc, cls))
            click.echo(f"error: {exc}", err=True)
            sys.exit(code)


@click.group(cls=_Group)
@click.version_option(__version__, prog_name="auditor-server")
@click.option("-v", "--verbose", count=True, help="More logging (-v info, -vv debug).")
def main(verbose: int) -> None:
    """Lab side of auditor-sandbox: corpus, model, gradient index and attribution."""
    level = logging.WARNING - 10 * min(verbose, 2)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def _path(exists: bool = False, **kw: Any) -> click.Path:
    return click.Path(path_type=Path, exists=exists, **kw)


# --- corpus ----------------------------------------------------------------------------


@main.command()
@click.option("--corpus", required=True, type=_path(dir_okay=False), help="JSONL corpus file.")
@click.option(
    "--catalog", required=True, type=_path(dir_okay=False), help="SQLite catalog to create."
)
def ingest(corpus: Path, catalog: Path) -> None:
    """Validate a JSONL corpus and store it as a SQLite catalog (all or nothing)."""
    from auditor_server.corpus.catalog import ingest as ingest_corpus
    from auditor_server.errors import CorpusError

    try:
        with ingest_corpus(corpus, catalog) as cat:
            click.echo(f"ingested {len(cat)} records into {catalog} ({cat.manifest_hash})")
    except CorpusError as exc:
        raise InputError(f"{corpus.name}: {exc}") from exc


@main.command("demo-corpus")
@click.option("--out", required=True, type=_path(dir_okay=False), help="Corpus JSONL to write.")
@click.option("--seed", default=0, show_default=True, help="Generator seed.")
@click.option("--size", type=click.Choice(["demo", "tiny"]), default="demo", show_default=True)
@click.option(
    "--questions",
    type=_path(dir_okay=False),
    default=None,
    help="Question file to write [default: next to --out, *.questions.jsonl].",
)
@click.option(
    "--background-dir",
    type=_path(file_okay=False),
    default=None,
    help="Public-domain texts fetched by scripts/fetch_background.sh.",
)
@click.option(
    "--question-style",
    type=click.Choice(["statement", "paraphrase"]),
    default="statement",
    show_default=True,
    help="statement: a fact question's prompt is the corpus sentence up to the answer. "
    "paraphrase: worded as no record words it ('Q: In which city was X born?\\nA:', 'The "
    "birthplace of X is'); same answers and relevant ids, same corpus bytes.",
)
def demo_corpus(
    out: Path,
    seed: int,
    size: str,
    questions: Path | None,
    background_dir: Path | None,
    question_style: str,
) -> None:
    """Generate the deterministic demo corpus and its question file.

    Every question carries `split` (tune/heldout, by a fixed hash of its subject) and `fair`
    (its subject is also named in records that state none of their facts).
    """
    from auditor_server.corpus.demo import generate_demo_corpus

    summary = generate_demo_corpus(
        out,
        seed=seed,
        size=size,  # type: ignore[arg-type]
        questions_out=questions,
        background_dir=background_dir,
        question_style=question_style,  # type: ignore[arg-type]
    )
    counts = ", ".join(f"{k}={v}" for k, v in summary.counts.items())
    click.echo(f"wrote {summary.corpus_path} ({counts}) and {summary.questions_path}")
    click.echo(f"background: {', '.join(summary.background_sources) or 'none'}")


# --- model -----------------------------------------------------------------------------


@main.command()
@click.option("--corpus", required=True, type=_path(exists=True, dir_okay=False))
@click.option("--out", required=True, type=_path(file_okay=False), help="Model directory to write.")
@click.option("--preset", type=click.Choice(["tiny", "demo"]), default="demo", show_default=True)
@click.option(
    "--epochs", type=click.IntRange(min=1), default=None, help="Override the preset's epochs."
)
@click.option("--seed", default=0, show_default=True)
@click.option(
    "--tokenizer-dir",
    type=_path(exists=True, file_okay=False),
    default=None,
    help="Reuse this model directory's tokenizer instead of training one (leave-k-out "
    "retraining must tokenize like the original model).",
)
@click.option(
    "--questions",
    type=_path(exists=True, dir_okay=False),
    default=None,
    help="Demo question file: report greedy fact and passage recall after training.",
)
@click.option(
    "--withhold",
    type=_path(exists=True, dir_okay=False),
    default=None,
    help="File of record ids, one per line: train as if they were absent, every other record "
    "in the same batch and step as without this option (a counterfactual retraining).",
)
def train(
    corpus: Path,
    out: Path,
    preset: str,
    epochs: int | None,
    seed: int,
    tokenizer_dir: Path | None,
    questions: Path | None,
    withhold: Path | None,
) -> None:
    """Train a small GPT-2-style model (and its tokenizer) on a corpus, on CPU.

    The model directory also holds the final AdamW state (optimizer_state.safetensors/.json).
    """
    from auditor_server.attribution.changes import read_ids
    from auditor_server.model.train import train_model

    summary = train_model(
        corpus,
        out,
        preset=preset,
        epochs=epochs,
        seed=seed,
        tokenizer_dir=tokenizer_dir,
        withheld_ids=() if withhold is None else read_ids(withhold),
    )
    held = f", {summary.withheld_records} records withheld" if summary.withheld_records else ""
    click.echo(
        f"trained {summary.num_parameters:,} parameters for {summary.epochs} epochs "
        f"({summary.steps} steps, {summary.seconds:.0f}s{held}), final loss "
        f"{summary.final_loss:.3f} -> {summary.out_dir}"
    )
    if questions is not None:
        from auditor_server.model.loading import load_model
        from auditor_server.model.train import evaluate_recall

        report = evaluate_recall(load_model(summary.out_dir), questions)
        click.echo(
            f"greedy recall: facts {report.fact_correct}/{report.fact_total} "
            f"({report.fact_accuracy:.1%}), passages {report.passage_exact}/"
            f"{report.passage_total} word for word ({report.passage_first_word} first word, "
            f"{report.passage_word_fraction:.1%} of words)"
        )


# --- index -----------------------------------------------------------------------------


def _feature_options(fn: F) -> F:
    from auditor_server.attribution.config import FeatureConfig

    d = FeatureConfig()
    opts = [
        click.option(
            "--proj-in",
            type=click.IntRange(min=1),
            default=d.proj_in,
            show_default=True,
            help="Input-side projection size per module.",
        ),
        click.option(
            "--proj-out",
            type=click.IntRange(min=1),
            default=d.proj_out,
            show_default=True,
            help="Output-side projection size per module.",
        ),
        click.option(
            "--proj-seed",
            type=int,
            default=d.seed,
            show_default=True,
            help="Seed of the random projections.",
        ),
        click.option(
            "--include",
            multiple=True,
            default=d.include,
            show_default=True,
            help="Glob of module names to track (repeatable).",
        ),
        click.option(
            "--exclude",
            multiple=True,
            default=d.exclude,
            help="Glob of module names not to track (repeatable).",
        ),
        click.option(
            "--input-embeddings/--no-input-embeddings",
            default=d.input_embeddings,
            show_default=True,
            help="Also capture the input embedding matrix's gradient (into the tied output "
            "layer's block when the model shares the matrix).",
        ),
        click.option(
            "--span-tokens",
            type=click.IntRange(min=1),
            default=d.span_tokens,
            show_default=True,
            help="Tokens per indexed window.",
        ),
        click.option(
            "--span-stride",
            type=click.IntRange(min=1),
            default=d.span_stride,
            show_default=True,
            help="Tokens between window starts.",
        ),
        click.option(
            "--batch-size", type=click.IntRange(min=1), default=d.batch_size, show_default=True
        ),
        click.option(
            "--shard-rows",
            type=click.IntRange(min=1),
            default=d.shard_rows,
            show_default=True,
            help="Rows per resumable shard.",
        ),
    ]
    for opt in reversed(opts):
        fn = opt(fn)
    return fn


def _index_options(fn: F) -> F:
    from auditor_server.attribution.config import IndexConfig

    d = IndexConfig()
    opts = [
        click.option(
            "--preconditioner",
            type=click.Choice(["empirical_fisher", "identity", "gn"]),
            default=d.preconditioner,
            show_default=True,
            help="gn is the former name of empirical_fisher (same matrix).",
        ),
        click.option(
            "--damping",
            type=float,
            default=d.damping,
            show_default=True,
            help="Fisher damping relative to each block's mean eigenvalue.",
        ),
        click.option(
            "--normalization",
            type=click.Choice(["cosine", "dot"]),
            default=d.normalization,
            show_default=True,
        ),
        click.option(
            "--index-kind",
            type=click.Choice(["exact", "ivf-sq", "ivf-pq", "pq-fs"]),
            default=d.index,
            show_default=True,
        ),
        click.option(
            "--nlist",
            type=click.IntRange(min=0),
            default=d.nlist,
            show_default=True,
            help="IVF cells (0: about 4*sqrt(rows)).",
        ),
        click.option("--nprobe", type=click.IntRange(min=1), default=d.nprobe, show_default=True),
        click.option(
            "--record-score",
            type=click.Choice(["mean", "max"]),
            default=d.record_score,
            show_default=True,
            help="A record's score: the mean or the best of its windows' scores.",
        ),
        click.option(
            "--lexical-candidates",
            type=click.IntRange(min=0),
            default=d.lexical_candidates,
            show_default=True,
            help="BM25 candidates per query that gradients re-rank (0: search the gradient "
            "index alone).",
        ),
        click.option(
            "--lexical-fusion",
            type=click.IntRange(min=0),
            default=d.lexical_fusion,
            show_default=True,
            help="k of the reciprocal-rank fusion of gradient and BM25 ranks that orders the "
            "candidates (0: gradient score alone).",
        ),
        click.option(
            "--policy",
            "fit_policy",
            type=_path(exists=True, dir_okay=False),
            default=None,
            help="The policy the index will be served under: every data class one of its "
            "roles may not see is kept out of the preconditioner and quantizer fit "
            "(private always is). `serve` refuses a policy hiding a class the fit used.",
        ),
    ]
    for opt in reversed(opts):
        fn = opt(fn)
    return fn


def _feature_config(kw: dict[str, Any]) -> Any:
    from auditor_server.attribution.config import FeatureConfig

    return FeatureConfig(
        proj_in=kw["proj_in"],
        proj_out=kw["proj_out"],
        seed=kw["proj_seed"],
        include=tuple(kw["include"]),
        exclude=tuple(kw["exclude"]),
        input_embeddings=kw["input_embeddings"],
        span_tokens=kw["span_tokens"],
        span_stride=kw["span_stride"],
        batch_size=kw["batch_size"],
        shard_rows=kw["shard_rows"],
    )


def _index_config(kw: dict[str, Any]) -> Any:
    from auditor_server.attribution.config import IndexConfig

    return IndexConfig(
        preconditioner=kw["preconditioner"],
        damping=kw["damping"],
        normalization=kw["normalization"],
        index=kw["index_kind"],
        nlist=kw["nlist"],
        nprobe=kw["nprobe"],
        record_score=kw["record_score"],
        lexical_candidates=kw["lexical_candidates"],
        lexical_fusion=kw["lexical_fusion"],
        fit_exclude_classes=_fit_exclusions(kw["fit_policy"]),
    )


MODEL_DTYPE_CHOICES = ("auto", "float32", "bfloat16", "float16")
"""``--dtype`` of build and add (``attribution.build.MODEL_DTYPES`` plus ``auto``; spelled
out here so the CLI loads without torch)."""


def _fit_exclusions(policy_path: Path | None) -> tuple[str, ...]:
    """The classes besides ``private`` that ``policy_path``'s roles do not all see."""
    if policy_path is None:
        return ()
    from auditor_server.policy.model import Policy

    hidden = Policy.from_file(policy_path).hidden_from_some_role() - {"private"}
    return tuple(sorted(hidden))


@main.command()
@click.option("--model", "model_dir", required=True, type=_path(exists=True, file_okay=False))
@click.option("--corpus", required=True, type=_path(exists=True, dir_okay=False))
@click.option("--out", required=True, type=_path(file_okay=False), help="Index directory.")
@click.option(
    "--questions",
    type=_path(exists=True, dir_okay=False),
    default=None,
    help=(
        "Run the counterfactual check (`validate`, "
        "on a sample of its questions) on this question file once the index is built."
    ),
)
@click.option(
    "--device",
    default="cpu",
    show_default=True,
    help="cpu, or cuda (under torchrun each rank takes cuda:LOCAL_RANK and NCCL).",
)
@click.option(
    "--dtype",
    type=click.Choice(MODEL_DTYPE_CHOICES),
    default="float32",
    show_default=True,
    help="Weights' dtype while featurizing (auto: the checkpoint's); gradients are "
    "projected and stored in float32 either way.",
)
@click.option("--no-progress", is_flag=True, help="Hide progress bars.")
@_feature_options
@_index_options
def build(
    model_dir: Path,
    corpus: Path,
    out: Path,
    questions: Path | None,
    device: str,
    dtype: str,
    no_progress: bool,
    **kw: Any,
) -> None:
    """Ingest, featurize (resumable; torchrun-shardable), precondition and index a corpus."""
    from auditor_server.attribution.build import build_index

    result = build_index(
        model_dir=model_dir,
        corpus_path=corpus,
        out_dir=out,
        feature_config=_feature_config(kw),
        index_config=_index_config(kw),
        device=device,
        dtype=dtype,
        progress=not no_progress,
    )
    if result is None:  # a non-zero torchrun rank: rank 0 reports
        return
    click.echo(
        f"indexed {result.n_rows:,} rows of {result.n_records:,} records "
        f"(dim {result.dim}; {result.shards_computed} shards computed, "
        f"{result.shards_reused} reused) -> {result.index_dir}\nsnapshot {result.snapshot_id}"
    )
    if questions is not None:
        from auditor_server.attribution.commands import (
            BUILD_QUESTIONS,
            VALIDATION_FILE,
            format_validation,
            run_validation,
        )

        validation = run_validation(
            out,
            questions,
            n_questions=BUILD_QUESTIONS,
            optimizer_step=False,
            device=device,
            progress=not no_progress,
            verify=False,
        )
        click.echo(format_validation(validation))
        click.echo(f"saved to {out / VALIDATION_FILE}")


@main.command()
@click.option("--index", "index_dir", required=True, type=_path(exists=True, file_okay=False))
@click.option("--no-progress", is_flag=True)
@_index_options
def reindex(index_dir: Path, no_progress: bool, **kw: Any) -> None:
    """Refit preconditioner and FAISS index from stored features (no gradient recompute)."""
    from auditor_server.attribution.build import reindex as reindex_fn

    snapshot = reindex_fn(index_dir, _index_config(kw))
    click.echo(f"reindexed {index_dir}\nsnapshot {snapshot}")


@main.command()
@click.option("--index", "index_dir", required=True, type=_path(exists=True, file_okay=False))
@click.option(
    "--ids",
    "ids_file",
    required=True,
    type=_path(exists=True, dir_okay=False),
    help="Record ids to take down, one per line (# comments allowed).",
)
def remove(index_dir: Path, ids_file: Path) -> None:
    """Take records out of an index (text, rows, derived files) without recomputing gradients.

    Prints the new snapshot id; the old one stays in the snapshot history. Restart `serve`
    to answer from the new snapshot. The model's weights still carry what they learned.
    """
    from auditor_server.attribution.changes import read_ids, remove_records

    result = remove_records(index_dir, read_ids(ids_file))
    click.echo(
        f"removed {result.records_removed:,} records ({result.rows_removed:,} rows); "
        f"{result.n_records:,} records, {result.n_rows:,} rows remain\n"
        f"snapshot {result.parent_snapshot_id} -> {result.snapshot_id}"
    )


@main.command()
@click.option("--index", "index_dir", required=True, type=_path(exists=True, file_okay=False))
@click.option(
    "--corpus",
    required=True,
    type=_path(exists=True, dir_okay=False),
    help="JSONL of the records to add (ids must be new to the index).",
)
@click.option("--device", default="cpu", show_default=True)
@click.option(
    "--dtype",
    type=click.Choice(MODEL_DTYPE_CHOICES),
    default="float32",
    show_default=True,
)
def add(index_dir: Path, corpus: Path, device: str, dtype: str) -> None:
    """Add records to an index, featurizing only their rows, with the index's own model.

    Prints the new snapshot id; the old one stays in the snapshot history. Restart `serve`
    to answer from the new snapshot.
    """
    from auditor_server.attribution.changes import add_records

    result = add_records(index_dir, corpus, device=device, dtype=dtype)
    click.echo(
        f"added {result.records_added:,} records ({result.rows_added:,} rows); "
        f"{result.n_records:,} records, {result.n_rows:,} rows in all\n"
        f"snapshot {result.parent_snapshot_id} -> {result.snapshot_id}"
    )


@main.command("milvus-export")
@click.option("--index", "index_dir", required=True, type=_path(exists=True, file_okay=False))
@click.option(
    "--uri",
    required=True,
    help="Milvus server address (http://host:19530) or a Milvus Lite file (*.db). The "
    "token, if any, is read from $MILVUS_TOKEN.",
)
@click.option(
    "--index-type",
    type=click.Choice(["FLAT", "HNSW", "IVF_FLAT", "IVF_SQ8", "IVF_PQ", "DISKANN", "AUTOINDEX"]),
    default="FLAT",
    show_default=True,
    help="Milvus index over the rows (FLAT is exact; the engine re-scores exactly anyway).",
)
@click.option(
    "--keep-previous",
    is_flag=True,
    help="Keep the collections of the index's earlier snapshots (after a takedown they "
    "hold removed rows; they are dropped by default).",
)
def milvus_export(index_dir: Path, uri: str, index_type: str, keep_previous: bool) -> None:
    """Load a finished index's rows into a Milvus collection for `serve --milvus-uri`."""
    import os

    from auditor_server.attribution.backends import export_to_milvus

    name, rows = export_to_milvus(
        index_dir,
        uri,
        index_type=index_type,
        token=os.environ.get("MILVUS_TOKEN"),
        drop_previous=not keep_previous,
    )
    click.echo(f"{rows:,} rows in Milvus collection {name} at {uri}")


@main.command()
@click.option("--index", "index_dir", required=True, type=_path(exists=True, file_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print the history as JSON.")
def snapshots(index_dir: Path, as_json: bool) -> None:
    """List every snapshot the index has had, oldest first, with what changed."""
    import json

    from auditor_server.attribution.snapshots import read_history

    entries = read_history(index_dir)
    if as_json:
        click.echo(json.dumps(entries, indent=1))
        return
    if not entries:
        click.echo("no snapshot history (index built before it existed)")
    for e in entries:
        change = e["change"]
        if e["records_removed"]:
            change += f" -{e['records_removed']} records ({e['removed_ids_sha256'][:19]}…)"
        if e["records_added"]:
            change += f" +{e['records_added']} records"
        click.echo(f"{e['created']}  {e['snapshot_id']}  {change}  ({e['n_records']:,} records)")


@main.command()
@click.option("--index", "index_dir", required=True, type=_path(exists=True, file_okay=False))
@click.option(
    "--shingle-chars",
    type=click.IntRange(6, 64),
    default=None,
    help="Normalized characters per shingle [default: 10].",
)
@click.option(
    "--boilerplate-records",
    type=click.IntRange(min=0),
    default=None,
    help=(
        "A shingle with no digit that occurs in at least this many private records is "
        "template text and is not withheld; 0 withholds all [default: 10]."
    ),
)
def guard(index_dir: Path, shingle_chars: int | None, boilerplate_records: int | None) -> None:
    """(Re)build the withheld-text guard of an index from its catalog, with a fresh key."""
    from auditor_server.attribution import layout
    from auditor_server.attribution.build import build_guard
    from auditor_server.corpus.catalog import Catalog

    catalog_path = index_dir / layout.CATALOG
    if not catalog_path.is_file():
        raise ConfigError(f"{index_dir} has no {layout.CATALOG}; run `auditor-server build`")
    with Catalog.open(catalog_path) as catalog:
        sets = build_guard(
            index_dir,
            catalog,
            shingle_chars=shingle_chars,
            boilerplate_records=boilerplate_records,
        )
    counts = ", ".join(f"{c} {sets.count(c):,}" for c in sets.classes)
    template = ", ".join(
        f"{c} {sets.boilerplate_count(c):,}" for c in sets.classes if sets.boilerplate_count(c)
    )
    click.echo(
        f"guard: {sets.shingle_chars}-character shingles ({counts}; "
        f"{sets.nbytes / 2**20:.1f} MiB) -> {index_dir / layout.GUARD}\n"
        f"boilerplate not withheld (no digit, in >= {sets.boilerplate_records} records): "
        f"{template or 'none'}"
    )


@main.command()
@click.option("--index", "index_dir", required=True, type=_path(exists=True, file_okay=False))
def verbatim(index_dir: Path) -> None:
    """(Re)build the verbatim-evidence index (suffix arrays) of an index from its catalog."""
    from auditor_server.attribution import layout
    from auditor_server.attribution.build import build_verbatim
    from auditor_server.corpus.catalog import Catalog

    catalog_path = index_dir / layout.CATALOG
    if not catalog_path.is_file():
        raise ConfigError(f"{index_dir} has no {layout.CATALOG}; run `auditor-server build`")
    with Catalog.open(catalog_path) as catalog, build_verbatim(index_dir, catalog) as index:
        counts = ", ".join(f"{c} {index.suffixes(c):,}" for c in index.classes) or "none"
    size = sum(f.stat().st_size for f in (index_dir / layout.VERBATIM).iterdir())
    click.echo(
        f"verbatim: suffixes per class ({counts}; private is never indexed; "
        f"{size / 2**20:.1f} MiB) -> {index_dir / layout.VERBATIM}"
    )


@main.command()
@click.option("--index", "index_dir", required=True, type=_path(exists=True, file_okay=False))
@click.option("--prompt", required=True)
@click.option("--completion", required=True)
@click.option("--top-k", type=click.IntRange(1, 1000), default=10, show_default=True)
@click.option(
    "--exclude-class",
    multiple=True,
    type=click.Choice(["public", "proprietary", "private"]),
    help="Remove a data class before ranking (repeatable).",
)
@click.option(
    "--model",
    "model_dir",
    type=_path(exists=True, file_okay=False),
    default=None,
    help="Model directory [default: the one the index was built with].",
)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def attribute(
    index_dir: Path,
    prompt: str,
    completion: str,
    top_k: int,
    exclude_class: tuple[str, ...],
    model_dir: Path | None,
    as_json: bool,
) -> None:
    """Which training records most influenced log p(COMPLETION | PROMPT)?"""
    from auditor_server.attribution.engine import AttributionEngine

    with AttributionEngine.open(index_dir, model_dir=model_dir) as engine:
        answer = engine.attribute(prompt, completion, top_k=top_k, exclude_classes=exclude_class)
        if as_json:
            click.echo(json.dumps(dataclasses.asdict(answer), indent=2))
            return
        click.echo(f"log p(completion | prompt) = {answer.completion_logprob:.3f}")
        for r in answer.results:
            rec = engine.catalog.get(r.record_id)
            text = rec.text[r.span.char_start : r.span.char_end].replace("\n", " ")
            click.echo(f"{r.rank:>3}. {r.score:+.4f}  {r.record_id} [{r.data_class}] «{text}»")


@main.command()
@click.option("--index", "index_dir", required=True, type=_path(exists=True, file_okay=False))
@click.option("--questions", required=True, type=_path(exists=True, dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print the full result as JSON.")
@click.option("--device", default="cpu", show_default=True)
@click.option("--no-progress", is_flag=True)
def evaluate(
    index_dir: Path, questions: Path, as_json: bool, device: str, no_progress: bool
) -> None:
    """Recall@1, recall@10 and MRR of attribution vs. BM25 on a question file."""
    _run_evaluation(index_dir, questions, as_json=as_json, progress=not no_progress, device=device)


def _run_evaluation(
    index_dir: Path, questions: Path, *, as_json: bool, progress: bool, device: str
) -> None:
    from auditor_server.attribution import layout
    from auditor_server.attribution.engine import AttributionEngine
    from auditor_server.attribution.evaluate import evaluate as evaluate_fn
    from auditor_server.attribution.evaluate import read_questions
    from auditor_server.fsutil import atomic_write_json

    qs = read_questions(questions)
    with AttributionEngine.open(index_dir, device=device) as engine:
        result = evaluate_fn(engine, qs, progress=progress)
    result["questions_file"] = str(questions)
    atomic_write_json(index_dir / layout.EVALUATION, result)
    if as_json:
        click.echo(json.dumps(result, indent=2))
        return
    click.echo(f"{'questions':<22} {'method':<9} {'recall@1':>9} {'recall@10':>10} {'mrr@10':>8}")
    blocks = [
        ("all", result["overall"]),
        *result["by_kind"].items(),
        *(("model " + k, v) for k, v in result["by_model_knowledge"].items()),
    ]
    for name, block in blocks:
        for method in ("gradient", "bm25"):
            m = block[method]
            click.echo(
                f"{name + ' (' + str(m['n']) + ')':<22} {method:<9} {m['recall@1']:>9.3f} "
                f"{m['recall@10']:>10.3f} {m['mrr@10']:>8.3f}"
            )
    if result["n_too_long_for_model"]:
        click.echo(
            f"{result['n_too_long_for_model']} question(s) exceed the model's context "
            "and count as gradient misses"
        )
    click.echo(f"saved to {index_dir / layout.EVALUATION}")


@main.command()
@click.option("--index", "index_dir", required=True, type=_path(exists=True, file_okay=False))
@click.option("--prompt", required=True)
@click.option("--max-new-tokens", type=click.IntRange(1, 512), default=32, show_default=True)
@click.option("--temperature", type=click.FloatRange(min=0), default=0.0, show_default=True)
@click.option("--seed", type=int, default=None)
def generate(
    index_dir: Path, prompt: str, max_new_tokens: int, temperature: float, seed: int | None
) -> None:
    """Continue PROMPT with the indexed model (greedy unless --temperature > 0)."""
    from auditor_server.attribution.engine import AttributionEngine

    with AttributionEngine.open(index_dir, verify=False) as engine:
        click.echo(
            engine.generate(
                prompt, max_new_tokens=max_new_tokens, temperature=temperature, seed=seed
            )
        )


# --- service ---------------------------------------------------------------------------


@main.command()
@click.option("--index", "index_dir", required=True, type=_path(exists=True, file_okay=False))
@click.option("--policy", "policy_path", required=True, type=_path(exists=True, dir_okay=False))
@click.option(
    "--lab-key",
    "lab_key_path",
    required=True,
    type=_path(exists=True),
    help="Directory (or lab.key file) from `auditor-server keys`.",
)
@click.option(
    "--state",
    "state_dir",
    required=True,
    type=_path(file_okay=False),
    help="Directory for the ledger, replay cache and quotas (SQLite; keep it across restarts).",
)
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=click.IntRange(0, 65535), default=50051, show_default=True)
@click.option("--tls-cert", type=_path(exists=True, dir_okay=False), help="Server certificate.")
@click.option("--tls-key", type=_path(exists=True, dir_okay=False), help="Server private key.")
@click.option(
    "--tls-client-ca",
    type=_path(exists=True, dir_okay=False),
    help="Require client certificates signed by this CA (mutual TLS).",
)
@click.option(
    "--insecure", is_flag=True, help="Serve without TLS (only for local tests and benchmarks)."
)
@click.option(
    "--max-workers",
    type=click.IntRange(6, 256),
    default=32,
    show_default=True,
    help="gRPC worker threads. 4 are kept for cheap RPCs (WhoAmI, GetPolicy, proofs); model "
    "calls share the rest, and one auditor may hold at most half of those.",
)
@click.option(
    "--max-concurrent-rpcs", type=click.IntRange(1, 10_000), default=64, show_default=True
)
@click.option(
    "--milvus-uri",
    default=None,
    help="Search the snapshot's rows in Milvus (a server address, or a Milvus Lite *.db "
    "file) instead of the local FAISS index; see `milvus-export`. The token, if any, is "
    "read from $MILVUS_TOKEN.",
)
def serve(
    index_dir: Path,
    policy_path: Path,
    lab_key_path: Path,
    state_dir: Path,
    host: str,
    port: int,
    tls_cert: Path | None,
    tls_key: Path | None,
    tls_client_ca: Path | None,
    insecure: bool,
    max_workers: int,
    max_concurrent_rpcs: int,
    milvus_uri: str | None,
) -> None:
    """Serve the audit API over gRPC until SIGTERM/SIGINT; SIGHUP reloads the policy."""
    from auditor_server.server import ServerOptions, TLSFiles, open_service
    from auditor_server.server import serve as run_server

    if (tls_cert is None) != (tls_key is None):
        raise ConfigError("give both --tls-cert and --tls-key, or neither")
    if tls_cert is None and not insecure:
        raise ConfigError("TLS is required: give --tls-cert and --tls-key (or --insecure)")
    if tls_client_ca is not None and tls_cert is None:
        raise ConfigError("--tls-client-ca needs --tls-cert and --tls-key")
    tls = (
        TLSFiles(cert=tls_cert, key=tls_key, client_ca=tls_client_ca)
        if tls_cert is not None and tls_key is not None
        else None
    )
    service = open_service(
        index_dir=index_dir,
        policy_path=policy_path,
        lab_key_path=lab_key_path,
        state_dir=state_dir,
        milvus_uri=milvus_uri,
    )
    run_server(
        service,
        ServerOptions(
            host=host,
            port=port,
            tls=tls,
            max_workers=max_workers,
            max_concurrent_rpcs=max_concurrent_rpcs,
        ),
    )


def _register_subcommands() -> None:
    """Commands whose code lives with the package it drives."""
    from auditor_server.attribution.commands import validate_command
    from auditor_server.ledger.commands import ledger_group
    from auditor_server.security.commands import keys_command, tls_demo_certs_command

    main.add_command(keys_command)
    main.add_command(tls_demo_certs_command)
    main.add_command(ledger_group)
    main.add_command(validate_command)


_register_subcommands()


if __name__ == "__main__":  # pragma: no cover
    main()
