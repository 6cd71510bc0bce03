"""Cutting records into token windows: the rows of the gradient store.

A whole-document gradient is dominated by the document's many unrelated tokens, so a fact
stated in one sentence is invisible in it. Each record is therefore cut into overlapping
windows of ``span_tokens`` tokens; every window is one row that remembers its record and its
token and character span, so an answer can say *where* in a record the influence lies.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

ROW_FIELDS = ("record", "tok_start", "tok_end", "char_start", "char_end")


@dataclass(frozen=True)
class RowTable:
    """Columnar description of every row; row ``i`` is column entry ``i``."""

    record: NDArray[np.int64]
    tok_start: NDArray[np.int64]
    tok_end: NDArray[np.int64]
    char_start: NDArray[np.int64]
    char_end: NDArray[np.int64]

    def __len__(self) -> int:
        return int(self.record.shape[0])

    def to_arrays(self) -> dict[str, NDArray[np.int64]]:
        """Columns by name, for ``np.savez``."""
        return {name: getattr(self, name) for name in ROW_FIELDS}

    @classmethod
    def from_arrays(cls, arrays: dict[str, NDArray[np.int64]]) -> RowTable:
        """Inverse of :meth:`to_arrays`."""
        return cls(**{name: np.asarray(arrays[name], dtype=np.int64) for name in ROW_FIELDS})

    def to_matrix(self) -> NDArray[np.int64]:
        """``(rows, 5)`` int64, columns in ``ROW_FIELDS`` order (for collectives)."""
        return np.stack([getattr(self, name) for name in ROW_FIELDS], axis=1).reshape(
            -1, len(ROW_FIELDS)
        )

    @classmethod
    def from_matrix(cls, matrix: NDArray[np.int64]) -> RowTable:
        """Inverse of :meth:`to_matrix`."""
        return cls(
            **{name: np.ascontiguousarray(matrix[:, i]) for i, name in enumerate(ROW_FIELDS)}
        )

    def shifted(self, first_record: int) -> RowTable:
        """The same rows with record ordinals counted from ``first_record``."""
        return RowTable(**{**self.to_arrays(), "record": self.record + first_record})

    def equals(self, other: RowTable) -> bool:
        """Column-wise equality (used to check a resumed build cuts rows the same way)."""
        return all(np.array_equal(getattr(self, n), getattr(other, n)) for n in ROW_FIELDS)


def window_starts(n_tokens: int, span: int, stride: int) -> list[int]:
    """Start offsets of the windows covering ``n_tokens`` tokens; the last one ends at the end."""
    if n_tokens <= span:
        return [0]
    starts = list(range(0, n_tokens - span + 1, stride))
    if starts[-1] + span < n_tokens:
        starts.append(n_tokens - span)
    return starts


def cut_rows(
    token_offsets: Sequence[Sequence[tuple[int, int]]], *, span: int, stride: int
) -> RowTable:
    """Windows of every record, given each record's token character offsets.

    Args:
        token_offsets: per record, the (char_start, char_end) of each token, as returned by a
            fast tokenizer's ``offset_mapping``. A record with no tokens yields no row.
        span: tokens per window.
        stride: tokens between window starts.
    """
    cols: dict[str, list[int]] = {name: [] for name in ROW_FIELDS}
    for ordinal, offsets in enumerate(token_offsets):
        n = len(offsets)
        if n == 0:
            continue
        for start in window_starts(n, span, stride):
            end = min(start + span, n)
            cols["record"].append(ordinal)
            cols["tok_start"].append(start)
            cols["tok_end"].append(end)
            cols["char_start"].append(int(offsets[start][0]))
            cols["char_end"].append(int(offsets[end - 1][1]))
    return RowTable(**{k: np.asarray(v, dtype=np.int64) for k, v in cols.items()})
