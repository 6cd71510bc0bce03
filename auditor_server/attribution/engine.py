"""``AttributionEngine``: open a built index and answer attribution queries.

A query is the gradient of log p(completion | prompt), captured, projected and preconditioned
exactly like the stored rows, then matched against them by inner product. Rows are windows,
answers are records: a record's score is the mean (or, for indexes built before issue 9, the
best) of its windows' scores, and the answer says which window matched best and what share
of the score's magnitude each tracked module gave. Candidates come from a BM25 search over
the visible records (``IndexConfig.lexical_candidates``), or from the gradient index itself,
and are ordered by the fusion of their gradient and BM25 ranks
(``IndexConfig.lexical_fusion``; by gradient score alone for older indexes).
"""

from __future__ import annotations

import functools
import json
import threading
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from auditor_server.attribution import layout
from auditor_server.attribution.backends import FaissSearcher, MilvusSearcher, RowSearcher
from auditor_server.attribution.config import FeatureConfig, IndexConfig
from auditor_server.attribution.featurize import Featurizer
from auditor_server.attribution.index import read_index
from auditor_server.attribution.lexical import BM25Baseline
from auditor_server.attribution.precondition import Preconditioner
from auditor_server.attribution.spans import RowTable
from auditor_server.corpus.catalog import Catalog
from auditor_server.corpus.records import DATA_CLASSES
from auditor_server.errors import ConfigError, IndexMismatchError, InputError, IntegrityError
from auditor_server.fsutil import sha256_file
from auditor_server.model.generation import (
    GenerationRequest,
    GenerationResult,
    ScoreResult,
    generate,
    generate_constrained,
    generate_many,
    score,
    score_many,
)
from auditor_server.model.loading import LoadedModel, hash_model_files, load_model
from auditor_server.policy.guard import MANIFEST_FILE as GUARD_MANIFEST
from auditor_server.policy.guard import ShingleSets, WithheldGuard

MAX_TOP_K = 1000


@dataclass(frozen=True)
class Span:
    """Where in its record the best-matching window lies."""

    tok_start: int
    tok_end: int
    char_start: int
    char_end: int


@dataclass(frozen=True)
class Attribution:
    """One training record's influence on a query."""

    rank: int
    record_id: str
    data_class: str
    score: float
    span: Span
    module_shares: dict[str, float] = field(repr=False)
    """Each tracked module's share of the score's magnitude: ``|c_m| / Σ|c_m|`` where the
    score is ``Σ c_m`` over modules, so every share is a true fraction in [0, 1] and they
    sum to 1 (a module that pulled the score down still counts for its size)."""


@dataclass(frozen=True)
class AttributionAnswer:
    """The ranked answer to one query, with the snapshot it came from."""

    prompt: str
    completion: str
    completion_logprob: float
    results: list[Attribution]
    snapshot_id: str


class AttributionEngine:
    """A loaded model plus its index, ready to attribute, generate and score."""

    def __init__(
        self,
        *,
        index_dir: Path,
        manifest: dict[str, Any],
        lm: LoadedModel,
        catalog: Catalog,
        rows: RowTable,
        featurizer: Featurizer,
        preconditioner: Preconditioner,
        vectors: NDArray[np.float16],
        index: Any,
        index_config: IndexConfig,
        searcher: RowSearcher | None = None,
    ) -> None:
        self.index_dir = index_dir
        self.manifest = manifest
        self.lm = lm
        self.catalog = catalog
        self.rows = rows
        self.featurizer = featurizer
        self.preconditioner = preconditioner
        self.vectors = vectors
        self.index_config = index_config
        classes = np.asarray(catalog.data_classes())
        self._row_class = classes[rows.record]
        self._record_class = classes
        self.searcher: RowSearcher = searcher or FaissSearcher(
            index, vectors, self._row_class, index_config.nprobe
        )
        """Where candidate rows come from (``faiss``: the index file; ``milvus``)."""
        self._allowed_rows: dict[frozenset[str], int] = {}
        self._lexical: dict[frozenset[str], BM25Baseline] = {}
        self._lexical_lock = threading.Lock()
        # Rows are cut record by record, in catalog order: record i owns rows
        # [_row_start[i], _row_start[i + 1]).
        if len(rows) and np.any(np.diff(rows.record) < 0):
            raise IntegrityError("row table is not in record order")
        self._row_start = np.searchsorted(rows.record, np.arange(len(classes) + 1))

    @property
    def snapshot_id(self) -> str:
        return str(self.manifest["snapshot_id"])

    @functools.cached_property
    def shingle_sets(self) -> ShingleSets | None:
        """The index's withheld-text shingles (``INDEX_DIR/guard``), or None if it has none.

        Loaded on first use (memory-mapped, checksums verified), so opening an engine for
        attribution alone does not pay for it.

        Raises:
            IntegrityError: the guard's files fail their checksums.
        """
        guard_dir = self.index_dir / layout.GUARD
        if not (guard_dir / GUARD_MANIFEST).exists():
            return None
        return ShingleSets.load(guard_dir)

    @classmethod
    def open(
        cls,
        index_dir: Path | str,
        *,
        model_dir: Path | str | None = None,
        device: str = "cpu",
        verify: bool = True,
        milvus_uri: str | None = None,
        milvus_token: str | None = None,
    ) -> AttributionEngine:
        """Open an index built by ``auditor-server build``.

        With ``milvus_uri``, candidate rows come from the snapshot's Milvus collection
        (``auditor-server milvus-export``) instead of the local FAISS index file, which is
        then not loaded.

        Args:
            index_dir: the build's output directory.
            model_dir: the model to query with; defaults to the one the index was built from.
                Its weights and tokenizer must hash to the values recorded in the index.
            device: torch device for queries.
            verify: check the artifacts' checksums against the manifest.

        Raises:
            ConfigError: not a finished index directory.
            IndexMismatchError: the model or tokenizer differs from the one indexed.
            IntegrityError: an artifact fails its checksum.
        """
        root = Path(index_dir)
        manifest_path = root / layout.MANIFEST
        if not manifest_path.exists():
            raise ConfigError(
                f"{root} is not a finished index (no {layout.MANIFEST}); run or rerun "
                "`auditor-server build`"
            )
        manifest = json.loads(manifest_path.read_text())
        if manifest.get("format_version") != layout.FORMAT_VERSION:
            raise ConfigError(f"{root}: unsupported index format {manifest.get('format_version')}")
        if verify:
            for name, digest in manifest["artifacts"].items():
                if sha256_file(root / name) != digest:
                    raise IntegrityError(f"{root / name}: checksum differs from the manifest")
        mdir = Path(model_dir) if model_dir is not None else Path(manifest["model_dir"])
        model_hash, tokenizer_hash = hash_model_files(mdir)
        if model_hash != manifest["model_hash"]:
            raise IndexMismatchError(
                f"model at {mdir} ({model_hash[:19]}…) is not the model this index was built "
                f"with ({manifest['model_hash'][:19]}…)"
            )
        if tokenizer_hash != manifest["tokenizer_hash"]:
            raise IndexMismatchError(
                f"tokenizer at {mdir} ({tokenizer_hash[:19]}…) differs from the indexed one "
                f"({manifest['tokenizer_hash'][:19]}…)"
            )
        lm = load_model(mdir, device=device)
        feature_config = FeatureConfig.from_dict(manifest["feature_config"])
        featurizer = Featurizer(lm, feature_config)
        if featurizer.module_names != manifest["modules"]:
            raise IndexMismatchError("tracked modules of the model differ from the indexed ones")
        with np.load(root / layout.ROWS) as npz:
            rows = RowTable.from_arrays(dict(npz))
        vectors = np.load(root / layout.VECTORS, mmap_mode="r")
        index_config = IndexConfig.from_dict(manifest["index_config"])
        searcher: RowSearcher | None = None
        index: Any = None
        if milvus_uri is not None:
            searcher = MilvusSearcher.open(milvus_uri, manifest, token=milvus_token)
        else:
            index = read_index(root / layout.FAISS_INDEX)
        return cls(
            index_dir=root,
            manifest=manifest,
            lm=lm,
            catalog=Catalog.open(root / layout.CATALOG),
            rows=rows,
            featurizer=featurizer,
            preconditioner=Preconditioner.load(root / layout.PRECONDITIONER),
            vectors=vectors,
            index=index,
            index_config=index_config,
            searcher=searcher,
        )

    def close(self) -> None:
        self.catalog.close()
        self.searcher.close()

    def __enter__(self) -> AttributionEngine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- queries -------------------------------------------------------------------------

    def attribute(
        self,
        prompt: str,
        completion: str,
        *,
        top_k: int = 10,
        exclude_classes: Collection[str] = (),
    ) -> AttributionAnswer:
        """Rank training records by their influence on log p(completion | prompt).

        Args:
            prompt: conditioning text.
            completion: the output whose provenance is asked about (must be non-empty).
            top_k: number of records returned (1..1000).
            exclude_classes: data classes removed *before* ranking: they take no rank and
                change no score or count of any other result.

        Raises:
            InputError: empty completion, bad ``top_k`` or unknown data class.
        """
        return self.attribute_many(
            [(prompt, completion)], top_k=top_k, exclude_classes=exclude_classes
        )[0]

    def attribute_many(
        self,
        pairs: Sequence[tuple[str, str]],
        *,
        top_k: int = 10,
        exclude_classes: Collection[str] = (),
    ) -> list[AttributionAnswer]:
        """:meth:`attribute` for many queries, featurized in batches."""
        if not 1 <= top_k <= MAX_TOP_K:
            raise InputError(f"top_k must be between 1 and {MAX_TOP_K}, got {top_k}")
        for prompt, completion in pairs:
            if not completion:
                raise InputError("completion must not be empty")
            if not isinstance(prompt, str):
                raise InputError("prompt must be a string")
        excluded = self._excluded(exclude_classes)
        raw, logprobs = self.featurizer.featurize_queries(pairs)
        queries = self.preconditioner.apply(raw)
        proposals = self._lexical_candidates(excluded, [p + c for p, c in pairs])
        return [
            AttributionAnswer(
                prompt=p,
                completion=c,
                completion_logprob=float(lp),
                results=self._rank(q, top_k, excluded, proposed),
                snapshot_id=self.snapshot_id,
            )
            for (p, c), q, lp, proposed in zip(pairs, queries, logprobs, proposals, strict=True)
        ]

    def generate(self, prompt: str, **kwargs: Any) -> str:
        """Continue ``prompt`` with the indexed model (see ``model.generation.generate``)."""
        return generate(self.lm, prompt, **kwargs)

    def generate_constrained(
        self, prompt: str, *, guard: WithheldGuard | None, **kwargs: Any
    ) -> GenerationResult:
        """:meth:`generate`, steered away from withheld text: no token may complete a
        shingle of ``guard`` (``None`` constrains nothing). See
        ``model.generation.generate_constrained`` for the other arguments."""
        banned = guard.completes if guard is not None and len(guard) else None
        return generate_constrained(self.lm, prompt, banned=banned, **kwargs)

    def score(self, prompt: str, completion: str) -> ScoreResult:
        """log p(completion | prompt) under the indexed model."""
        return score(self.lm, prompt, completion)

    def generate_many(
        self, requests: Sequence[tuple[str, Mapping[str, Any]]]
    ) -> list[GenerationResult]:
        """:meth:`generate_constrained` for several ``(prompt, kwargs)`` requests, decoded as
        one batch (``model.generation.generate_many``); ``kwargs`` are exactly
        :meth:`generate_constrained`'s keyword arguments, ``guard`` included. The engine
        scheduler runs concurrent Generate calls this way.

        Raises:
            InputError: any one request is invalid (then run them one by one to find it).
        """
        batch = []
        for prompt, kwargs in requests:
            options = dict(kwargs)
            guard = options.pop("guard", None)
            banned = guard.completes if guard is not None and len(guard) else None
            batch.append(GenerationRequest(prompt, banned=banned, **options))
        return generate_many(self.lm, batch)

    def score_many(self, pairs: Sequence[tuple[str, str]]) -> list[ScoreResult]:
        """:meth:`score` for several pairs in one padded forward
        (``model.generation.score_many``); concurrent Score calls are run this way."""
        return score_many(self.lm, pairs)

    # --- internals -----------------------------------------------------------------------

    def _excluded(self, exclude_classes: Collection[str]) -> frozenset[str]:
        excluded = frozenset(exclude_classes)
        unknown = excluded - set(DATA_CLASSES)
        if unknown:
            raise InputError(f"unknown data class(es) to exclude: {', '.join(sorted(unknown))}")
        return excluded

    def _allowed_count(self, excluded: frozenset[str]) -> int:
        """Rows of the classes not excluded (cached per set)."""
        if excluded not in self._allowed_rows:
            self._allowed_rows[excluded] = int(
                (~np.isin(self._row_class, sorted(excluded))).sum()
            )
        return self._allowed_rows[excluded]

    def _lexical_candidates(
        self, excluded: frozenset[str], texts: Sequence[str]
    ) -> list[list[int]]:
        """BM25's proposals (record ordinals) for each text, over the visible records only.

        One BM25 index per set of excluded classes, built on first use: a withheld class is
        not in it at all, so it shapes neither the term statistics nor which records are
        proposed.
        """
        n = self.index_config.lexical_candidates
        if n == 0:
            return [[] for _ in texts]
        with self._lexical_lock:
            bm25 = self._lexical.get(excluded)
            if bm25 is None:
                visible = [
                    i
                    for i, c in enumerate(self._record_class.tolist())
                    if c not in excluded and self._row_start[i + 1] > self._row_start[i]
                ]
                bm25 = BM25Baseline(
                    [str(i) for i in visible], [self.catalog.record_at(i).text for i in visible]
                )
                self._lexical[excluded] = bm25
        return [[int(i) for i in row] for row in bm25.rank(list(texts), k=n)]

    def _rank(
        self,
        query: NDArray[np.float32],
        top_k: int,
        excluded: frozenset[str],
        proposed: Sequence[int] = (),
    ) -> list[Attribution]:
        records = list(proposed)
        if len(records) < top_k:
            seen = set(records)
            records += [r for r in self._index_candidates(query, top_k, excluded) if r not in seen]
        scored = [(self._record_score(query, rec), rec) for rec in records]
        ordered = sorted(scored, key=lambda t: (-t[0][0], t[1]))
        k = self.index_config.lexical_fusion
        if k and proposed:
            ordered = fuse_ranks(ordered, proposed, k)
        return [
            self._result(rank, rec, score_, row, query)
            for rank, ((score_, row), rec) in enumerate(ordered[:top_k], start=1)
        ]

    def _index_candidates(
        self, query: NDArray[np.float32], top_k: int, excluded: frozenset[str]
    ) -> list[int]:
        """At least ``top_k`` distinct records (when that many are allowed) holding the
        vector backend's best rows."""
        n_allowed = min(self._allowed_count(excluded), self.searcher.max_k)
        exact = self.index_config.index == "exact"
        k_rows = min(n_allowed, top_k * 8)
        while True:
            fetch = k_rows if exact else min(n_allowed, k_rows * self.index_config.rerank)
            ids = self.searcher.search(query, max(fetch, 1), excluded)
            cand = np.sort(np.asarray(ids, dtype=np.int64))
            # Re-score every candidate exactly from the stored vectors, so the order does not
            # depend on the index kind's quantization.
            # einsum, not ``@``: from ~500 candidates numpy hands this gemv to OpenBLAS's
            # thread pool, whose sleeping worker can take a scheduler tick (4-8 ms on a
            # loaded 2-core host) to wake; einsum stays on this thread.
            scores = np.einsum("ij,j->i", np.asarray(self.vectors[cand], np.float32), query)
            best: dict[int, float] = {}
            for row, s in zip(cand.tolist(), scores.tolist(), strict=True):
                rec = int(self.rows.record[row])
                best[rec] = max(s, best.get(rec, -np.inf))
            if len(best) >= top_k or k_rows >= n_allowed:
                break
            k_rows = min(n_allowed, k_rows * 4)
        return [rec for rec, _ in sorted(best.items(), key=lambda kv: (-kv[1], kv[0]))]

    def _record_score(self, query: NDArray[np.float32], record: int) -> tuple[float, int]:
        """(the record's score, its best-matching row)."""
        start, stop = int(self._row_start[record]), int(self._row_start[record + 1])
        scores = np.einsum("ij,j->i", np.asarray(self.vectors[start:stop], np.float32), query)
        best = int(np.argmax(scores))
        value = (
            float(scores.mean())
            if self.index_config.record_score == "mean"
            else float(scores[best])
        )
        return value, start + best

    def _result(
        self, rank: int, record: int, score_: float, row: int, query: NDArray[np.float32]
    ) -> Attribution:
        rec = self.catalog.record_at(record)
        if self.index_config.record_score == "mean":
            start, stop = int(self._row_start[record]), int(self._row_start[record + 1])
            vec = np.asarray(self.vectors[start:stop], dtype=np.float32).mean(axis=0)
        else:
            vec = np.asarray(self.vectors[row], dtype=np.float32)
        dims = self.featurizer.config.dims_per_module
        magnitude = np.abs((vec * query).reshape(-1, dims).sum(axis=1))
        total = float(magnitude.sum())
        shares = {
            name: (float(c) / total if total else 0.0)
            for name, c in zip(self.featurizer.module_names, magnitude, strict=True)
        }
        r = self.rows
        return Attribution(
            rank=rank,
            record_id=rec.id,
            data_class=rec.source.data_class,
            score=float(score_),
            span=Span(
                int(r.tok_start[row]),
                int(r.tok_end[row]),
                int(r.char_start[row]),
                int(r.char_end[row]),
            ),
            module_shares=shares,
        )


_Scored = tuple[tuple[float, int], int]


def fuse_ranks(by_gradient: Sequence[_Scored], lexical: Sequence[int], k: int) -> list[_Scored]:
    """Reorder ``((score, row), record)`` pairs, given best gradient score first, by
    reciprocal-rank fusion with the BM25 order ``lexical`` (record ordinals, best first).

    A record BM25 did not propose (the gradient index filled in) gets no lexical term. Ties
    go to the better gradient rank, so the order is total and does not depend on ``top_k``.
    """
    lexical_rank = {rec: i for i, rec in enumerate(lexical, start=1)}

    def fused(item: tuple[int, _Scored]) -> tuple[float, int]:
        gradient_rank, (_, rec) = item
        value = 1.0 / (k + gradient_rank)
        if rec in lexical_rank:
            value += 1.0 / (k + lexical_rank[rec])
        return -value, gradient_rank

    return [t for _, t in sorted(enumerate(by_gradient, start=1), key=fused)]
