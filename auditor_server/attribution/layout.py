"""Names of the files in an index directory, in one place."""

from __future__ import annotations

CATALOG = "catalog.sqlite"
PLAN = "build-plan.json"
ROWS = "rows.npz"
PRECONDITIONER = "preconditioner.npz"
VECTORS = "vectors.f16.npy"
FAISS_INDEX = "index.faiss"
MANIFEST = "manifest.json"
EVALUATION = "evaluation.json"
FORMAT_VERSION = 1
