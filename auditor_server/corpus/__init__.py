"""Training corpus: JSONL records, the SQLite catalog, and the demo corpus generator.

``demo`` and ``background`` are not imported here, so importing the package stays cheap.
"""

from auditor_server.corpus.catalog import Catalog, ingest
from auditor_server.corpus.records import (
    DATA_CLASSES,
    DataClass,
    Record,
    Source,
    corpus_manifest_hash,
    parse_record,
    read_corpus,
)

__all__ = [
    "DATA_CLASSES",
    "Catalog",
    "DataClass",
    "Record",
    "Source",
    "corpus_manifest_hash",
    "ingest",
    "parse_record",
    "read_corpus",
]
