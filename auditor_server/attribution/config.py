"""Configuration of gradient featurization and of the attribution index.

Two dataclasses, because they change at different times: :class:`FeatureConfig` fixes what
a stored row *is* (which modules, which projection, which token windows) and cannot change
without recomputing every gradient; :class:`IndexConfig` fixes how stored rows are compared
(preconditioner, normalization, FAISS index kind) and can be refit from the stored features.
Both are hashed into the index snapshot id.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

from auditor_server.corpus.records import DATA_CLASSES
from auditor_server.errors import ConfigError

PreconditionerKind = Literal["identity", "empirical_fisher", "gn"]
Normalization = Literal["cosine", "dot"]
RecordScore = Literal["max", "mean"]
IndexKind = Literal["exact", "ivf-sq", "ivf-pq", "pq-fs"]

TAIL_PATCH_TOP_K = 10
"""Records per method and question the counterfactual check patches the model with."""
TAIL_PATCH_SGD_LR = 0.05
"""Step size of the plain-SGD tail-patch (TrackStar's setting for small models)."""


@dataclass(frozen=True)
class FeatureConfig:
    """What one stored row of the gradient store is, and how it was computed."""

    proj_in: int = 16
    """Rows of the input-side projection P_in (columns kept of each module's input)."""
    proj_out: int = 16
    """Columns of the output-side projection P_out; a module contributes proj_in*proj_out dims."""
    seed: int = 0
    """Seed of the random projections; part of the snapshot id so a query uses the same ones."""
    include: tuple[str, ...] = ("*",)
    """Glob patterns (fnmatch on qualified module names) of the Linear/Conv1D modules to track."""
    exclude: tuple[str, ...] = ()
    """Glob patterns of modules never tracked, applied after ``include``."""
    input_embeddings: bool = False
    """Also capture the gradient of the input embedding matrix. When the output layer shares
    that matrix (GPT-2's ``wte``/``lm_head``), both uses go into the output layer's block
    with its projections, so the block is the projection of the whole shared matrix's
    gradient; otherwise the embedding gets a block of its own. The input side of an
    embedding is a one-hot token, so its projection is one row of the projection matrix per
    token: the cost is a gather, not a matmul."""
    span_tokens: int = 32
    """Length of the token window of one row; a record longer than this becomes several rows,
    so a single fact sentence is not drowned by the rest of its document."""
    span_stride: int = 16
    """Tokens between the starts of consecutive windows of one record."""
    batch_size: int = 32
    """Rows per forward+backward pass while featurizing."""
    shard_rows: int = 1024
    """Rows per on-disk shard: the unit of resumption and of work split across ranks."""

    def __post_init__(self) -> None:
        for name in (
            "proj_in",
            "proj_out",
            "span_tokens",
            "span_stride",
            "batch_size",
            "shard_rows",
        ):
            if getattr(self, name) < 1:
                raise ConfigError(f"feature config: {name} must be >= 1, got {getattr(self, name)}")
        if self.span_stride > self.span_tokens:
            raise ConfigError(
                f"feature config: span_stride ({self.span_stride}) must not exceed "
                f"span_tokens ({self.span_tokens}), or tokens between windows would be lost"
            )
        if not self.include:
            raise ConfigError("feature config: include must name at least one module pattern")

    @property
    def dims_per_module(self) -> int:
        """Dimensions one tracked module contributes to a row."""
        return self.proj_in * self.proj_out

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict; round-trips through :meth:`from_dict`."""
        return _jsonable(dataclasses.asdict(self))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FeatureConfig:
        """Rebuild from :meth:`to_dict` output, rejecting unknown keys."""
        return _from_dict(cls, data)


@dataclass(frozen=True)
class IndexConfig:
    """How stored rows are compared with a query."""

    preconditioner: PreconditionerKind = "empirical_fisher"
    """``empirical_fisher``: the damped second moment of the stored (projected) per-row
    gradients, computed with the training labels, one block per module, applied as F^-1/2 so
    that directions common to many examples (shared by every sentence) count less.
    ``gn`` is its former name (it was never the Gauss-Newton matrix, whose expectation is
    over labels sampled from the model); indexes built with it keep their snapshot id.
    ``identity``: raw projected gradients."""
    damping: float = 0.1
    """Damping of each Fisher block, relative to the block's mean eigenvalue."""
    normalization: Normalization = "cosine"
    """``cosine`` unit-normalizes rows and queries (scores in [-1, 1]); ``dot`` keeps magnitudes."""
    index: IndexKind = "exact"
    """FAISS index kind: exact inner product, IVF with scalar/product quantization, or
    ``pq-fs``: every row scanned as a 4-bit product-quantized code with SIMD "fast scan"
    kernels, then re-ranked exactly. IVF routes a query to the cells whose centres it is
    closest to, which fails for attribution queries (a completion's gradient has cosine
    ~0.2 with its best rows, far from any centre); ``pq-fs`` skips routing and still scans
    1M rows ~10x faster than ``exact`` (bench/index_scale.py)."""
    nlist: int = 0
    """IVF cells; 0 picks about 4*sqrt(N)."""
    nprobe: int = 16
    """IVF cells visited per query."""
    pq_m: int = 0
    """PQ sub-quantizers: one byte each for ``ivf-pq`` (0 picks dims/8), half a byte each
    for ``pq-fs`` (0 picks dims/4, i.e. dims/8 bytes a row)."""
    rerank: int = 10
    """For approximate kinds: fetch top_k*rerank candidates, then re-score them exactly."""
    record_score: RecordScore = "mean"
    """How a record's windows make its score: ``mean`` of its windows' scores (the gradient
    of a record's mean token loss is the mean of its parts, and that is what one training
    step on the record follows), or ``max``: its best window's (the rule before issue 9).
    Measured on the demo (40 questions, SGD tail-patch of the top 10): mean 0.65 vs max
    0.62 alone, 0.79 vs 0.70 with lexical candidates."""
    lexical_candidates: int = 100
    """Records a BM25 search over the visible classes proposes for each query; the gradient
    scores re-rank them (``0``: rank the whole gradient index instead). Lexical retrieval
    finds the records that share the question's words, and the gradient says which of them
    moved the answer: on the demo the gradient index alone reaches a tail-patch of 0.65,
    BM25's own order 0.12, and BM25's top 100 re-ranked by gradient 0.79 (40 held-out
    questions; adding the gradient index's own top candidates lowers it: they are mostly
    projection noise). When BM25 proposes fewer than ``top_k`` records the gradient index
    fills in."""
    lexical_fusion: int = 10
    """Order the candidates by reciprocal-rank fusion of their gradient rank and their BM25
    rank, ``1/(k + gradient rank) + 1/(k + BM25 rank)`` with this ``k`` (``0``: by the
    gradient score alone). Why: from the final weights, a record the model has memorized
    has a small gradient that points at whatever it still gets wrong, so the records that
    *state* a fact rank below records that merely end with the same answer, yet retraining
    without the statements is what takes the fact away (bench/leave_k_out.py: the engine's
    drop 2.46 -> 2.85 nats, still below BM25's 3.83). On 40 held-out fact questions the
    gradient alone put 0.75 of the planted statements in its top 10 on the demo (0.25 on the
    paraphrased corpus), the fusion 1.0 (0.99), with a tail-patch still 7x (1.6x) BM25's.
    ``k`` = 10 was chosen on the demo's tuning questions. The score an answer reports stays
    the gradient score: it is the influence estimate shares are computed from."""
    exclude_private_from_fit: bool = True
    """Fit the preconditioner (and IVF quantizers) on non-private rows only, so that no answer
    about other data depends on private records being in the store."""
    fit_exclude_classes: tuple[str, ...] = ()
    """Further data classes kept out of the fit, for the same reason: every class some role
    of the serving policy may not see (``build --policy`` / ``reindex --policy`` set it from
    the policy, and ``serve`` refuses a policy that hides a class the fit included)."""

    def __post_init__(self) -> None:
        if self.preconditioner not in ("identity", "empirical_fisher", "gn"):
            raise ConfigError(f"index config: unknown preconditioner {self.preconditioner!r}")
        if self.normalization not in ("cosine", "dot"):
            raise ConfigError(f"index config: unknown normalization {self.normalization!r}")
        if self.index not in ("exact", "ivf-sq", "ivf-pq", "pq-fs"):
            raise ConfigError(f"index config: unknown index kind {self.index!r}")
        if not self.damping > 0:
            raise ConfigError(f"index config: damping must be > 0, got {self.damping}")
        if self.record_score not in ("max", "mean"):
            raise ConfigError(f"index config: unknown record_score {self.record_score!r}")
        if self.lexical_candidates < 0:
            raise ConfigError("index config: lexical_candidates must be >= 0")
        if self.lexical_fusion < 0:
            raise ConfigError("index config: lexical_fusion must be >= 0")
        unknown = sorted(set(self.fit_exclude_classes) - set(DATA_CLASSES))
        if unknown:
            raise ConfigError(f"index config: unknown data class(es) {unknown} in fit_exclude")
        if list(self.fit_exclude_classes) != sorted(set(self.fit_exclude_classes)):
            raise ConfigError("index config: fit_exclude_classes must be sorted and unique")
        if self.nlist < 0 or self.nprobe < 1 or self.rerank < 1 or self.pq_m < 0:
            raise ConfigError("index config: nlist/pq_m must be >= 0, nprobe/rerank >= 1")

    @property
    def fit_excluded(self) -> frozenset[str]:
        """Every data class whose rows shape neither the preconditioner nor the quantizers."""
        private = {"private"} if self.exclude_private_from_fit else set()
        return frozenset(private | set(self.fit_exclude_classes))

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict; round-trips through :meth:`from_dict`."""
        return _jsonable(dataclasses.asdict(self))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> IndexConfig:
        """Rebuild from :meth:`to_dict` output, rejecting unknown keys.

        Keys an older index's manifest lacks take the behaviour that index was built and
        measured with, not today's defaults: a snapshot id must keep meaning one ranking.
        """
        return _from_dict(cls, {**LEGACY_INDEX_OPTIONS, **data})


LEGACY_INDEX_OPTIONS: dict[str, Any] = {
    "record_score": "max",
    "lexical_candidates": 0,
    "lexical_fusion": 0,
}
"""What an index config written before these options existed meant by leaving them out."""


def _jsonable(data: dict[str, Any]) -> dict[str, Any]:
    return dict(json.loads(json.dumps(data)))


_C = TypeVar("_C", FeatureConfig, IndexConfig)


def _from_dict(cls: type[_C], data: dict[str, Any]) -> _C:
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(f"{cls.__name__}: unknown option(s) {', '.join(unknown)}")
    kwargs: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items()}
    return cls(**kwargs)
