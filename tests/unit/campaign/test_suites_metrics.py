"""The suites' plain-Python measurements: overlap, intervals, seeds."""

from __future__ import annotations

import math
import subprocess
import sys

import pytest

from auditor_client.campaign.suites import metrics


def test_longest_common_substring_finds_the_verbatim_run() -> None:
    generation = "and then: the harbour froze solid, said nobody"
    reference = "On the night the harbour froze, Ilse climbed"
    assert metrics.longest_common_substring(generation, reference) == " the harbour froze"
    assert metrics.longest_common_substring("", reference) == ""
    assert metrics.longest_common_substring("xyz", "abc") == ""


def test_longest_common_substring_is_not_fooled_by_autojunk() -> None:
    # Over 200 characters difflib's autojunk would drop frequent characters (spaces) and
    # report a far shorter match; the suite must see the whole copied run.
    copied = "the quick brown fox jumps over the lazy dog " * 6
    reference = "Preface. " + copied + " Epilogue."
    assert len(metrics.longest_common_substring(copied, reference)) == len(copied)


def test_ngram_overlap_counts_the_generations_ngrams() -> None:
    reference = "one two three four five six"
    assert metrics.ngram_overlap("one two three four", reference, 2) == (1.0, 3)
    # 4 bigrams, 2 found (one two, two three); case and punctuation do not matter.
    assert metrics.ngram_overlap("One, TWO three zebra yak", reference, 2) == (0.5, 4)
    assert metrics.ngram_overlap("one", reference, 2) == (0.0, 0)


def test_wilson_interval_known_values() -> None:
    low, high = metrics.wilson_interval(5, 10, 0.95)
    assert low == pytest.approx(0.2366, abs=1e-4)
    assert high == pytest.approx(0.7634, abs=1e-4)
    low, high = metrics.wilson_interval(0, 20, 0.95)
    assert low == 0.0 and high == pytest.approx(0.1611, abs=1e-4)
    assert metrics.wilson_interval(0, 0) == (0.0, 1.0)
    with pytest.raises(ValueError):
        metrics.wilson_interval(3, 2)


def test_bootstrap_is_deterministic_and_brackets_the_mean() -> None:
    values = [0.5, -0.2, 1.3, 0.9, 0.1, 2.0, -0.7, 0.4]
    first = metrics.bootstrap_mean_ci(values, resamples=500, confidence=0.9, seed=7)
    again = metrics.bootstrap_mean_ci(values, resamples=500, confidence=0.9, seed=7)
    other = metrics.bootstrap_mean_ci(values, resamples=500, confidence=0.9, seed=8)
    assert first == again
    assert first != other
    assert first is not None
    assert first[0] < metrics.mean(values) < first[1]
    assert metrics.bootstrap_mean_ci([], resamples=10, confidence=0.9, seed=1) is None
    assert metrics.bootstrap_mean_ci([2.5], resamples=10, confidence=0.9, seed=1) == (2.5, 2.5)


def test_bootstrap_is_the_same_in_a_fresh_interpreter() -> None:
    # A verifier recomputes in another process; nothing may depend on hash salting.
    code = (
        "from auditor_client.campaign.suites import metrics\n"
        "print(metrics.bootstrap_mean_ci([0.5, -0.2, 1.3, 0.9], resamples=200, "
        "confidence=0.95, seed=3), metrics.derive_seed(20261123, 'bias', 'x'))\n"
    )
    here = f"{metrics.bootstrap_mean_ci([0.5, -0.2, 1.3, 0.9], resamples=200, confidence=0.95, seed=3)} {metrics.derive_seed(20261123, 'bias', 'x')}"  # noqa: E501
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == here


def test_derive_seed_is_stable_distinct_and_fits_uint64() -> None:
    a = metrics.derive_seed(1, "copyright", "p1")
    assert a == metrics.derive_seed(1, "copyright", "p1")
    assert a != metrics.derive_seed(1, "copyright", "p2")
    assert a != metrics.derive_seed(2, "copyright", "p1")
    assert 0 <= a < 2**63


def test_quantile_interpolates() -> None:
    assert metrics.quantile([0.0, 10.0], 0.25) == 2.5
    assert metrics.quantile([1.0, 2.0, 3.0], 0.5) == 2.0
    assert math.isclose(metrics.quantile([1.0, 2.0, 3.0, 4.0], 0.975), 3.925)
