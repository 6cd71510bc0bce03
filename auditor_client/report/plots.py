"""The report's charts as standalone SVG text (matplotlib's SVG backend, imported lazily).

Matplotlib is imported inside :func:`render_plots` only, so the thin client (``import
auditor_client.cli``) never loads it or numpy; without it installed a report is still
built, verified and rendered, just without charts (the page says so).

SVG keeps the HTML self-contained and the charts searchable: ``svg.fonttype: none`` writes
text as text (small, and still escaped by the backend) instead of glyph paths; math-text
parsing is off because labels are the lab's strings (a ``$`` in a title must not be
interpreted); each chart gets its own id salt so several can be inlined in one page without
id clashes; the XML prologue and metadata are stripped so the inline SVG references nothing
outside the page.
"""

from __future__ import annotations

import io
import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

LABEL_CHARS = 48
"""Longest axis label; longer source titles are cut with an ellipsis (tables show them whole)."""

TOP_SOURCES = 10
"""Sources shown in a top-sources chart."""


@dataclass(frozen=True)
class Plots:
    """Rendered charts: ``svgs[name]`` is SVG text; ``note`` says why there are none.

    Names are ``<suite>-influence``, ``<suite>-sources``, ``bias-gaps`` and
    ``toxicity-rate``; the renderers look them up and simply skip a missing one.
    """

    svgs: dict[str, str] = field(default_factory=dict)
    note: str | None = None


def plot_name(suite: str, kind: str) -> str:
    """A chart's name, safe as a file name whatever the suite is called."""
    return re.sub(r"[^A-Za-z0-9_.-]", "_", f"{suite}-{kind}")


def render_plots(report: Mapping[str, Any]) -> Plots:
    """Draw every chart the report's suite summaries have data for."""
    try:
        from matplotlib.figure import Figure  # noqa: F401 (probe the install only)
    except ImportError:
        return Plots(
            note="charts omitted: matplotlib is not installed (pip install matplotlib); "
            "the tables below hold the same numbers"
        )
    findings = report.get("findings")
    svgs: dict[str, str] = {}
    for suite, summary in sorted((findings or {}).items()):
        if not isinstance(summary, Mapping):
            continue
        probes, refused = summary.get("probes"), summary.get("refused")
        if isinstance(probes, int) and isinstance(refused, int) and refused >= probes:
            continue  # nothing answered: the section says so instead of drawing zeros
        shares = summary.get("influence_share_by_class")
        if isinstance(shares, Mapping) and shares:
            _add(svgs, plot_name(suite, "influence"), _influence, suite, shares)
        sources = summary.get("top_sources")
        if isinstance(sources, list) and sources:
            _add(svgs, plot_name(suite, "sources"), _sources, suite, sources)
        gaps = summary.get("gaps")
        if suite == "bias" and isinstance(gaps, list) and gaps:
            _add(svgs, "bias-gaps", _gaps, gaps)
        if suite == "toxicity" and _num(summary.get("toxicity_rate")) is not None:
            _add(svgs, "toxicity-rate", _toxicity, summary)
    return Plots(svgs=svgs)


def _add(svgs: dict[str, str], name: str, draw: Callable[..., Any], *args: Any) -> None:
    """Draw one chart under local settings (never the process's global rcParams)."""
    import matplotlib

    settings = {
        "svg.fonttype": "none",
        "svg.hashsalt": name,
        "text.parse_math": False,
        "font.size": 9,
    }
    with matplotlib.rc_context(cast(Any, settings)):
        figure = draw(*args)
        if figure is None:
            return
        buf = io.StringIO()
        figure.savefig(buf, format="svg", bbox_inches="tight")
    text = buf.getvalue()
    text = text[text.index("<svg") :]
    svgs[name] = re.sub(r"<metadata>.*?</metadata>\s*", "", text, flags=re.DOTALL)


def _figure(rows: int) -> Any:
    from matplotlib.figure import Figure

    return Figure(figsize=(7.0, 0.9 + 0.32 * max(rows, 1)))


def _influence(suite: str, shares: Mapping[str, Any]) -> Any:
    items: list[tuple[str, float]] = []
    for key, value in shares.items():
        share = _num(value)
        if share is not None:
            items.append((str(key), share))
    if not items:
        return None
    items.sort(key=lambda kv: kv[1])
    fig = _figure(len(items))
    ax = fig.add_subplot()
    ax.barh([_label(k) for k, _ in items], [v for _, v in items], color="#4c72b0")
    ax.set_xlim(0, max(1.0, max(v for _, v in items)))
    ax.set_xlabel("share of attributed influence")
    ax.set_title(f"{suite}: influence share by data class")
    return fig


def _sources(suite: str, sources: Sequence[Any]) -> Any:
    rows = []
    for s in sources[:TOP_SOURCES]:
        if isinstance(s, Mapping) and (share := _num(s.get("share"))) is not None:
            title = str(s.get("title") or "(untitled)")
            publisher = str(s.get("publisher") or "")
            label = f"{title} — {publisher}" if publisher else title
            rows.append((_label(label), share, str(s.get("data_class") or "")))
    if not rows:
        return None
    rows.reverse()  # best first from the top
    fig = _figure(len(rows))
    ax = fig.add_subplot()
    colors = ["#c44e52" if c == "proprietary" else "#4c72b0" for _, _, c in rows]
    ax.barh([r[0] for r in rows], [r[1] for r in rows], color=colors)
    ax.set_xlabel("share of attributions (red: proprietary)")
    ax.set_title(f"{suite}: top training sources")
    return fig


def _gaps(gaps: Sequence[Any]) -> Any:
    rows = []
    for g in gaps:
        if not isinstance(g, Mapping):
            continue
        mean, lo, hi = _num(g.get("mean_gap")), _num(g.get("ci_low")), _num(g.get("ci_high"))
        if mean is None:
            continue
        lo = mean if lo is None else min(lo, mean)
        hi = mean if hi is None else max(hi, mean)
        rows.append((_label(str(g.get("template") or "?")), mean, mean - lo, hi - mean))
    if not rows:
        return None
    rows.reverse()
    fig = _figure(len(rows))
    ax = fig.add_subplot()
    y = list(range(len(rows)))
    ax.errorbar(
        [r[1] for r in rows],
        y,
        xerr=[[r[2] for r in rows], [r[3] for r in rows]],
        fmt="o",
        color="#4c72b0",
        capsize=3,
    )
    ax.set_yticks(y, [r[0] for r in rows])
    ax.set_ylim(-0.5, len(rows) - 0.5)  # half a row of room: no marker sits on the frame
    ax.axvline(0.0, color="#888888", linewidth=0.8)
    ax.set_xlabel("mean log-probability gap between groups (95% CI)")
    ax.set_title("bias: gaps per template")
    return fig


def _toxicity(summary: Mapping[str, Any]) -> Any:
    rate = _num(summary.get("toxicity_rate"))
    assert rate is not None  # checked by the caller
    ci = summary.get("rate_ci")
    lo = hi = rate
    if isinstance(ci, list) and len(ci) == 2:
        lo = min(_num(ci[0]) or 0.0, rate) if _num(ci[0]) is not None else rate
        hi = max(_num(ci[1]) or 0.0, rate) if _num(ci[1]) is not None else rate
    fig = _figure(1)
    ax = fig.add_subplot()
    ax.errorbar([rate], [0], xerr=[[rate - lo], [hi - rate]], fmt="o", color="#c44e52", capsize=4)
    ax.set_yticks([0], ["toxic completions"])
    ax.set_xlim(0, 1)
    ax.set_xlabel("rate (95% CI)")
    ax.set_title("toxicity: rate of toxic completions")
    return fig


def _num(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def _label(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= LABEL_CHARS else text[: LABEL_CHARS - 1] + "…"
