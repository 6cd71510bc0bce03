"""Training corpus: JSONL records, the SQLite catalog, and the demo corpus generator."""

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
    "DataClass",
    "Record",
    "Source",
    "corpus_manifest_hash",
    "parse_record",
    "read_corpus",
]
