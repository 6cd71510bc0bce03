"""Projected empirical-Fisher preconditioning, one block per tracked module.

Raw gradient similarity is dominated by directions that almost every example shares (the
gradient of "predict a plausible next word"), so a fact sentence looks like any sentence.
Whitening each module's projected features with ``(F + λI)^-1/2``, where ``F`` is their
empirical second moment over the training rows (the projected *empirical* Fisher: gradients
taken with the training labels, not labels sampled from the model as the true Fisher and,
for this loss, the Gauss-Newton matrix would take them), turns the inner product into
``q_mᵀ (F+λI)^-1 φ_m``: directions common to many examples are divided by their large
variance, rare, example-specific directions keep their weight. ``λ`` is set per block relative
to its mean eigenvalue so the damping means the same for every module.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from auditor_server.attribution.config import IndexConfig
from auditor_server.fsutil import atomic_write


class SecondMoments:
    """Running per-module sums ``Σ φ_m φ_mᵀ`` (float64) and the number of rows folded in."""

    def __init__(self, n_modules: int, dims: int) -> None:
        self.n_modules = n_modules
        self.dims = dims
        self.sums = np.zeros((n_modules, dims, dims), dtype=np.float64)
        self.count = 0

    def add(self, features: NDArray[np.float32]) -> None:
        """Fold in raw features ``(n, modules, dims)``."""
        if features.shape[1:] != (self.n_modules, self.dims):
            raise ValueError(
                f"features of shape {features.shape[1:]} do not match "
                f"({self.n_modules}, {self.dims})"
            )
        for m in range(self.n_modules):
            block = features[:, m, :].astype(np.float64)
            self.sums[m] += block.T @ block
        self.count += int(features.shape[0])

    def means(self) -> NDArray[np.float64]:
        """``E[φ_m φ_mᵀ]`` per module (zeros when no row was added)."""
        return self.sums / max(self.count, 1)


@dataclass(frozen=True)
class Preconditioner:
    """Per-module linear maps applied to ``(n, modules, dims)`` features, then flattened."""

    kind: str
    transforms: NDArray[np.float32]  # (modules, dims, dims); identity for kind == "identity"
    normalization: str

    @classmethod
    def fit(cls, features: NDArray[np.float32], config: IndexConfig) -> Preconditioner:
        """Fit on raw training features ``(n, modules, dims)`` held in memory."""
        moments = SecondMoments(features.shape[1], features.shape[2])
        moments.add(features)
        return cls.from_moments(moments, config)

    @classmethod
    def from_moments(cls, moments: SecondMoments, config: IndexConfig) -> Preconditioner:
        """Fit from streamed (and, across ranks, summed) second moments.

        Why streamed: at lab scale the rows do not fit in one process; the per-module sums
        ``Σ φφᵀ`` do (modules × dims² floats), so each rank folds in its own shards one at a
        time and the sums are all-reduced before this is called.
        """
        n_modules, dims = moments.n_modules, moments.dims
        if config.preconditioner == "identity":
            eye = np.broadcast_to(np.eye(dims, dtype=np.float32), (n_modules, dims, dims))
            return cls("identity", np.ascontiguousarray(eye), config.normalization)
        transforms = np.empty((n_modules, dims, dims), dtype=np.float32)
        for m, fisher in enumerate(moments.means()):
            eigvals, eigvecs = np.linalg.eigh(fisher)
            eigvals = np.clip(eigvals, 0.0, None)
            mean = float(eigvals.mean())
            damping = config.damping * (mean if mean > 0 else 1.0)
            inv_sqrt = eigvecs @ np.diag(1.0 / np.sqrt(eigvals + damping)) @ eigvecs.T
            transforms[m] = inv_sqrt.astype(np.float32)
        return cls(config.preconditioner, transforms, config.normalization)

    def apply(self, features: NDArray[np.float32]) -> NDArray[np.float32]:
        """Preconditioned, optionally unit-normalized, flattened rows ``(n, modules*dims)``."""
        # (n, m, d) x (m, d, d) -> (n, m, d); the transforms are symmetric.
        out = np.einsum("nmd,mde->nme", features.astype(np.float32), self.transforms)
        flat = np.ascontiguousarray(out.reshape(out.shape[0], -1), dtype=np.float32)
        if self.normalization == "cosine":
            norms = np.linalg.norm(flat, axis=1, keepdims=True)
            flat /= np.where(norms > 0, norms, 1.0)
        return flat

    def save(self, path: Path) -> None:
        """Atomically write the fitted maps."""
        atomic_write(
            path,
            lambda fh: np.savez(
                fh,
                kind=np.array(self.kind),
                transforms=self.transforms,
                normalization=np.array(self.normalization),
            ),
        )

    @classmethod
    def load(cls, path: Path) -> Preconditioner:
        """Read maps written by :meth:`save`."""
        with np.load(path, allow_pickle=False) as npz:
            return cls(
                str(npz["kind"]), npz["transforms"].astype(np.float32), str(npz["normalization"])
            )
