"""Reciprocal-rank fusion of the gradient order with BM25's (``engine.fuse_ranks``)."""

from __future__ import annotations

from auditor_server.attribution.engine import fuse_ranks


def _scored(records: list[int]) -> list[tuple[tuple[float, int], int]]:
    """``((score, row), record)`` pairs, best gradient score first, as ``_rank`` builds them."""
    return [((1.0 - 0.1 * i, 100 + rec), rec) for i, rec in enumerate(records)]


def test_a_record_both_orders_rank_high_comes_first() -> None:
    by_gradient = _scored([7, 3, 9, 5, 1])
    # BM25 puts 5 first; the gradient puts it 4th. 7 is first by gradient, absent from BM25.
    fused = fuse_ranks(by_gradient, [5, 3, 1], k=1)
    order = [rec for _, rec in fused]
    # k=1: 3 -> 1/3 + 1/3, 5 -> 1/5 + 1/2, 7 -> 1/2, 1 -> 1/6 + 1/4, 9 -> 1/4.
    assert order == [5, 3, 7, 1, 9]


def test_scores_and_rows_travel_with_their_record() -> None:
    by_gradient = _scored([4, 2, 8])
    fused = fuse_ranks(by_gradient, [8, 2], k=10)
    assert sorted(fused) == sorted(by_gradient)
    for (score, row), rec in fused:
        assert row == 100 + rec
        assert ((score, row), rec) in by_gradient


def test_ties_go_to_the_better_gradient_rank() -> None:
    by_gradient = _scored([1, 2, 3, 4])
    # BM25's order reversed: records 1 and 4 (ranks 1+4) tie, as do 2 and 3 (2+3); a
    # record at both ends of its lists beats one in both middles at every k.
    for k in (1, 10, 1000):
        assert [r for _, r in fuse_ranks(by_gradient, [4, 3, 2, 1], k=k)] == [1, 4, 2, 3]


def test_without_lexical_proposals_the_gradient_order_is_kept() -> None:
    by_gradient = _scored([6, 5, 4])
    assert fuse_ranks(by_gradient, [], k=10) == by_gradient
