"""Turning token windows and query pairs into projected gradient features.

Training rows and queries go through the same capture code, so a query and the rows it is
compared with live in exactly the same feature space. They differ only in which tokens the
loss counts: every predicted token of a training window, but only the completion of a query
(the measurement is log p(completion | prompt)).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np
import torch
from numpy.typing import NDArray

from auditor_server.attribution.capture import GradientCapture, featurize_batch
from auditor_server.attribution.config import FeatureConfig
from auditor_server.attribution.spans import RowTable, cut_rows
from auditor_server.errors import InputError
from auditor_server.model.generation import adds_bos, encode_pair
from auditor_server.model.loading import LoadedModel


class Featurizer:
    """Computes features for rows and queries with one model and one feature config."""

    def __init__(self, lm: LoadedModel, config: FeatureConfig) -> None:
        self.lm = lm
        self.config = config
        self.capture = GradientCapture(lm.model, config)
        tok = lm.tokenizer
        self._prefix = [int(tok.bos_token_id)] if adds_bos(tok) else []
        pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        self._pad_id = int(pad) if pad is not None else 0

    @property
    def module_names(self) -> list[str]:
        return self.capture.module_names

    @property
    def n_modules(self) -> int:
        return len(self.capture.modules)

    def tokenize_records(self, texts: Sequence[str]) -> tuple[list[list[int]], RowTable]:
        """Token ids of every record and the windows cut from them."""
        enc = self.lm.tokenizer(list(texts), add_special_tokens=False, return_offsets_mapping=True)
        ids = [list(map(int, x)) for x in enc["input_ids"]]
        rows = cut_rows(
            enc["offset_mapping"], span=self.config.span_tokens, stride=self.config.span_stride
        )
        return ids, rows

    def window(self, record_ids: Sequence[int], start: int, stop: int) -> list[int]:
        """The model input of one row: optional BOS, then the window's tokens."""
        return [*self._prefix, *record_ids[start:stop]]

    def featurize_rows(
        self,
        token_ids: Mapping[int, Sequence[int]] | Sequence[Sequence[int]],
        rows: RowTable,
        indices: Sequence[int],
        *,
        on_batch: Callable[[int], None] | None = None,
    ) -> NDArray[np.float32]:
        """Raw features ``(len(indices), modules, dims)`` of the given rows, in that order.

        ``token_ids[ordinal]`` are the tokens of the record at that ordinal (a mapping holding
        only the records these rows come from is enough). Rows are batched by length (a
        deterministic order) to waste little work on padding; each row's features do not
        depend on its batch-mates.
        """
        order = sorted(
            range(len(indices)),
            key=lambda j: (int(rows.tok_end[indices[j]] - rows.tok_start[indices[j]]), j),
        )
        out = np.empty((len(indices), self.n_modules, self.config.dims_per_module), np.float32)
        bs = self.config.batch_size
        for b in range(0, len(order), bs):
            chunk = order[b : b + bs]
            seqs = []
            for j in chunk:
                r = indices[j]
                seqs.append(
                    self.window(
                        token_ids[int(rows.record[r])], int(rows.tok_start[r]), int(rows.tok_end[r])
                    )
                )
            feats, _ = featurize_batch(
                self.capture, seqs, [len(self._prefix)] * len(seqs), pad_id=self._pad_id
            )
            out[chunk] = feats.numpy()
            if on_batch is not None:
                on_batch(len(chunk))
        return out

    def fits(self, prompt: str, completion: str) -> bool:
        """Whether a query pair fits in the model's context."""
        limit = self.lm.max_positions
        return limit is None or len(encode_pair(self.lm.tokenizer, prompt, completion)[0]) <= limit

    def _check_length(self, n_tokens: int) -> None:
        limit = self.lm.max_positions
        if limit is not None and n_tokens > limit:
            raise InputError(
                f"prompt + completion is {n_tokens} tokens, longer than the model's "
                f"context of {limit}"
            )

    def featurize_queries(
        self, pairs: Sequence[tuple[str, str]]
    ) -> tuple[NDArray[np.float32], NDArray[np.float64]]:
        """Raw features ``(len(pairs), modules, dims)`` of log p(completion | prompt) queries,
        and each query's log p(completion | prompt) from the same forward pass.

        Raises:
            InputError: empty completion, or a pair longer than the model's context.
        """
        encoded = [encode_pair(self.lm.tokenizer, p, c) for p, c in pairs]
        for ids, _ in encoded:
            self._check_length(len(ids))
        out = np.empty((len(pairs), self.n_modules, self.config.dims_per_module), np.float32)
        logprobs = np.empty(len(pairs), np.float64)
        bs = self.config.batch_size
        for b in range(0, len(encoded), bs):
            chunk = encoded[b : b + bs]
            feats, nll = featurize_batch(
                self.capture, [e[0] for e in chunk], [e[1] for e in chunk], pad_id=self._pad_id
            )
            out[b : b + len(chunk)] = feats.numpy()
            logprobs[b : b + len(chunk)] = -nll.numpy()
        return out, logprobs


def set_torch_threads(n_threads: int | None) -> None:
    """Use ``n_threads`` intra-op threads (None leaves torch's default)."""
    if n_threads:
        torch.set_num_threads(max(1, n_threads))
