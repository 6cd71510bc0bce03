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
#: The counterfactual check (``auditor-server validate``, ``build --questions``): the lab
#: serves it, signed, as the index's evaluation certificate in GetPolicy answers, but only
#: while its ``snapshot_id`` is the index's own.
VALIDATION = "validation.json"
#: The withheld-text guard (``auditor_server.policy.guard``): shingle hashes per data class,
#: their hash key and ``guard.json``. Lab side only, like the catalog; the names of the files
#: inside are the guard module's (``MANIFEST_FILE``, ``KEY_FILE``, ``<data_class>.npy``).
GUARD = "guard"
#: Verbatim evidence (``auditor_server.attribution.verbatim``): per disclosable data class a
#: token stream, its suffix array and record table, and ``verbatim.json``. Lab side only; no
#: private text is ever in it.
VERBATIM = "verbatim"
#: Every snapshot this index has had, with the commitments its id hashes
#: (``auditor_server.attribution.snapshots``); served, signed, in GetPolicy answers.
SNAPSHOTS = "snapshots.json"
#: Where ``auditor-server remove`` stages the next snapshot's catalog, rows and shards.
TAKEDOWN_STAGE = ".takedown"
FORMAT_VERSION = 1
