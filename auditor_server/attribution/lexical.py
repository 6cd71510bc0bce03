"""BM25 over record texts: the lexical baseline of every evaluation, and the engine's
candidate source.

Lexical retrieval finds the records that share an output's words, which is what recall of
planted statements rewards and what a name alone achieves; it cannot say which of those
records changed the model. The engine therefore uses it only to *propose* records and lets
gradients rank them (``IndexConfig.lexical_candidates``), and every evaluation reports it
as a baseline beside the engine.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence


class BM25Baseline:
    """BM25 over whole record texts (bm25s, English stopwords removed)."""

    def __init__(self, ids: Sequence[str], texts: Sequence[str]) -> None:
        import bm25s

        logging.getLogger("bm25s").setLevel(logging.WARNING)
        self._bm25s = bm25s
        self.ids = list(ids)
        self.retriever = bm25s.BM25()
        if self.ids:
            self.retriever.index(
                bm25s.tokenize(list(texts), stopwords="en", show_progress=False),
                show_progress=False,
            )

    def rank(self, queries: Sequence[str], k: int) -> list[list[str]]:
        """The ``k`` best ids for each query (fewer when fewer records match at all)."""
        if not self.ids:
            return [[] for _ in queries]
        tokens = self._bm25s.tokenize(list(queries), stopwords="en", show_progress=False)
        docs, scores = self.retriever.retrieve(
            tokens, k=min(k, len(self.ids)), show_progress=False, n_threads=1
        )
        # A record sharing no query term scores 0: it is not a lexical candidate at all.
        return [
            [self.ids[int(d)] for d, s in zip(row, srow, strict=True) if s > 0]
            for row, srow in zip(docs, scores, strict=True)
        ]
