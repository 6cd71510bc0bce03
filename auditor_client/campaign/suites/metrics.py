"""Plain-Python measurements shared by the suites: overlap, intervals, seeds.

Everything here is deterministic and free of numpy, so a report verifier (or an auditor's
reviewer with nothing but the thin client installed) recomputes exactly the figures the
campaign stored.
"""

from __future__ import annotations

import hashlib
import math
import random
import re
from collections.abc import Sequence
from difflib import SequenceMatcher
from statistics import NormalDist

_WORD = re.compile(r"[\w']+")


def derive_seed(seed: int, *parts: str) -> int:
    """A per-probe seed from the campaign seed and names (stable across runs and machines).

    Python's ``hash`` is salted per process, so a resumed campaign would get other seeds;
    SHA-256 of the parts is not. The result fits the protocol's ``uint64`` and JSON ints.
    """
    material = "\x1f".join([str(seed), *parts]).encode("utf-8")
    return int.from_bytes(hashlib.sha256(material).digest()[:8], "big") >> 1


def longest_common_substring(a: str, b: str) -> str:
    """The longest run of characters ``a`` and ``b`` share verbatim.

    ``autojunk=False``: difflib's heuristic would otherwise treat frequent characters (spaces,
    ``e``) in texts over 200 characters as junk and miss long verbatim copies.
    """
    if not a or not b:
        return ""
    match = SequenceMatcher(None, a, b, autojunk=False).find_longest_match(0, len(a), 0, len(b))
    return a[match.a : match.a + match.size]


def words(text: str) -> list[str]:
    """Lower-cased word tokens; punctuation and spacing differences do not break n-grams."""
    return _WORD.findall(text.lower())


def word_ngrams(text: str, n: int) -> list[tuple[str, ...]]:
    """All word n-grams of ``text`` in order (with repeats)."""
    tokens = words(text)
    return [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]


def ngram_overlap(generation: str, reference: str, n: int) -> tuple[float, int]:
    """Fraction of the generation's word n-grams that occur in the reference, and their count.

    Measured from the generation's side: "how much of what the model said is copied", so a
    short verbatim generation scores 1.0 even against a long reference. Zero n-grams (a
    generation shorter than ``n`` words) gives 0.0: too short to call copying.
    """
    grams = word_ngrams(generation, n)
    if not grams:
        return 0.0, 0
    reference_grams = set(word_ngrams(reference, n))
    found = sum(1 for g in grams if g in reference_grams)
    return found / len(grams), len(grams)


def _z(confidence: float) -> float:
    return NormalDist().inv_cdf(0.5 + confidence / 2.0)


def wilson_interval(successes: int, trials: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval for a binomial rate.

    Chosen over the normal approximation because probe counts are small and rates sit near 0
    or 1, where the normal interval collapses to zero width or leaves [0, 1]. No trials: the
    uninformative [0, 1].
    """
    if trials <= 0:
        return 0.0, 1.0
    if not 0 <= successes <= trials:
        raise ValueError(f"successes {successes} outside 0..{trials}")
    z = _z(confidence)
    p = successes / trials
    denominator = 1.0 + z * z / trials
    centre = (p + z * z / (2 * trials)) / denominator
    half = z * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials)) / denominator
    # At 0 or n successes the bound is exactly 0 or 1; floating point leaves a 1e-17 residue.
    low = 0.0 if successes == 0 else max(0.0, centre - half)
    high = 1.0 if successes == trials else min(1.0, centre + half)
    return low, high


def quantile(sorted_values: Sequence[float], q: float) -> float:
    """Linear-interpolation quantile of already sorted values (numpy's default method)."""
    if not sorted_values:
        raise ValueError("quantile of no values")
    position = q * (len(sorted_values) - 1)
    low = math.floor(position)
    high = min(low + 1, len(sorted_values) - 1)
    fraction = position - low
    return sorted_values[low] + (sorted_values[high] - sorted_values[low]) * fraction


def mean(values: Sequence[float]) -> float:
    """Arithmetic mean; 0.0 for no values (a suite with nothing measured reports zeros)."""
    return math.fsum(values) / len(values) if values else 0.0


def bootstrap_mean_ci(
    values: Sequence[float], *, resamples: int, confidence: float, seed: int
) -> tuple[float, float] | None:
    """Percentile bootstrap interval for the mean, reproducible from ``seed``.

    Uses the stdlib ``random.Random`` (Mersenne Twister, stable across Python versions for
    ``choices`` with integer seeds), so a verifier recomputes the same interval. ``None`` for
    no values; a single value gives a zero-width interval.
    """
    if not values:
        return None
    if resamples < 1:
        raise ValueError("resamples must be at least 1")
    rng = random.Random(seed)  # noqa: S311 (reproducible resampling, not secrecy)
    n = len(values)
    means = sorted(math.fsum(rng.choices(values, k=n)) / n for _ in range(resamples))
    alpha = 1.0 - confidence
    return quantile(means, alpha / 2.0), quantile(means, 1.0 - alpha / 2.0)
