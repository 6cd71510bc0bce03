"""Human views of a report: one self-contained HTML page and a Markdown file.

Both are regenerated from ``report.json`` alone. Everything in a report that is not our own
fixed text came from the lab (source titles, publishers, urls, licences) or from the
campaign file, so every such string is escaped: :func:`html.escape` for HTML, and for
Markdown also the characters that would start a link, an image, a table cell or emphasis.
The HTML page loads nothing from anywhere: inline CSS, charts as inline SVG, no scripts, and
lab-supplied URLs shown as text rather than links (a regulator's browser should not be made
to fetch, or run, anything a report names).

Near the top, "How trustworthy are these attributions" shows the lab's signed evaluation
certificate from the report's ``evaluation`` section (each method's mean tail-patch with
its interval, the engine's ratio to each baseline), or why the report has none.

Each suite section degrades instead of failing: a suite with no summary, one the lab's
policy refused entirely (e.g. a third party may not call Score), or a summary missing
a key renders as a sentence saying so.
"""

from __future__ import annotations

import datetime as dt
import html
import json
import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from auditor_client.report.plots import plot_name

if TYPE_CHECKING:
    from auditor_client.report.plots import Plots

SUITE_ORDER = ("copyright", "bias", "toxicity", "privacy")
"""Sections appear in this order; other suites follow alphabetically."""

Cell = Callable[[Any], str]


@dataclass(frozen=True)
class Column:
    """One table column: the row key, its header, and how to format the value as text."""

    key: str
    header: str
    fmt: Cell


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, Mapping | list):
        return json.dumps(value, sort_keys=True, ensure_ascii=False)
    if isinstance(value, float):
        return _number(value)
    return " ".join(str(value).split())


def _number(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return _text(value) if value is not None else "–"
    if isinstance(value, int):
        return str(value)
    if not math.isfinite(value):
        return str(value)
    return f"{value:.4g}"


def _finite(value: Any, cell: Callable[[Any], str]) -> str:
    """``cell(value)`` for a finite number; a dash for anything else, booleans included: a
    report's JSON is the auditor's to edit, and a cell must not render what it cannot vouch
    for as a number."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return "–"
    return cell(value)


def _pair(value: Any, cell: Callable[[Any], str]) -> str:
    """A two-number interval as ``[lo, hi]``, each end through ``cell``; a dash otherwise."""
    if isinstance(value, list) and len(value) == 2:
        return f"[{cell(value[0])}, {cell(value[1])}]"
    return "–"


def _percent(value: Any) -> str:
    return _finite(value, lambda v: f"{100 * v:.1f}%")


def _interval(value: Any) -> str:
    return _pair(value, _percent)


def _when(ms: Any) -> str:
    if isinstance(ms, str):
        return _text(ms)
    if isinstance(ms, bool) or not isinstance(ms, int | float) or ms <= 0:
        return "–"
    return dt.datetime.fromtimestamp(ms / 1000, tz=dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


SOURCE_COLUMNS = (
    Column("title", "title", _text),
    Column("publisher", "publisher", _text),
    Column("url", "url", _text),
    Column("license", "licence", _text),
    Column("data_class", "class", _text),
    Column("count", "count", _number),
    Column("share", "share", _percent),
)
FLAGGED_COLUMNS = (
    Column("probe_id", "probe", _text),
    Column("reference_title", "reference title", _text),
    Column("lcs_chars", "LCS chars", _number),
    Column("ngram_overlap", "n-gram overlap", _number),
    Column("top_source", "top proprietary source (publisher, licence)", lambda v: _source(v)),
    Column("proprietary_share", "proprietary share", _percent),
)
VERBATIM_COLUMNS = (
    Column("probe_id", "probe", _text),
    Column("reference_title", "reference title", _text),
    Column("verbatim_work", "verbatim source of the generation", lambda v: _source(v)),
    Column("verbatim_chars", "verbatim chars", _number),
    Column("influence_top", "top influence source", lambda v: _source(v)),
    Column("disagreements", "disagreement", lambda v: ", ".join(map(_text, _list(v))) or "none"),
)
GAP_COLUMNS = (
    Column("template", "template", _text),
    Column("mean_gap", "mean gap", _number),
    Column("ci_low", "95% CI low", _number),
    Column("ci_high", "95% CI high", _number),
    Column("n", "n", _number),
)


def _source(value: Any) -> str:
    if not isinstance(value, Mapping):
        return _text(value)
    title = _text(value.get("title")) or "(untitled)"
    extra = ", ".join(t for t in (_text(value.get("publisher")), _text(value.get("license"))) if t)
    return f"{title} ({extra})" if extra else title


def _generic_columns(rows: Sequence[Any]) -> tuple[Column, ...]:
    """Columns for rows whose keys a suite chooses (source-like objects shown as sources)."""
    keys: list[str] = []
    for row in rows:
        if isinstance(row, Mapping):
            keys += [str(k) for k in row if str(k) not in keys]
    return tuple(
        Column(k, k.replace("_", " "), _source if k.endswith("source") else _cell) for k in keys
    )


def _cell(value: Any) -> str:
    return _number(value) if isinstance(value, int | float) else _text(value)


@dataclass(frozen=True)
class SuiteView:
    """What one suite section shows, computed once for both renderers."""

    name: str
    summary: Mapping[str, Any] | None
    status: str | None
    """A sentence replacing the findings (no probes, all refused), or None."""
    note: str | None
    """A sentence shown above the findings (some probes refused), or None."""
    figures: list[tuple[str, str]]
    tables: list[tuple[str, Sequence[Any], tuple[Column, ...]]]
    plots: list[str]


def suite_views(report: Mapping[str, Any], plots: Plots) -> list[SuiteView]:
    """One view per suite the campaign planned or the report summarizes."""
    findings = _mapping(report.get("findings"))
    campaign = _mapping(report.get("campaign"))
    names = set(findings) | set(_mapping(campaign.get("specs")))
    refusals: dict[str, dict[str, int]] = {}
    for probe in report.get("probes") or ():
        if isinstance(probe, Mapping):
            code = _mapping(probe.get("findings")).get("refused")
            if isinstance(code, str):
                counts = refusals.setdefault(str(probe.get("suite")), {})
                counts[code] = counts.get(code, 0) + 1
    ordered = [n for n in SUITE_ORDER if n in names] + sorted(names - set(SUITE_ORDER))
    return [_view(n, findings.get(n), refusals.get(n, {}), plots) for n in ordered]


def _view(name: str, summary: Any, refused: Mapping[str, int], plots: Plots) -> SuiteView:
    if not isinstance(summary, Mapping):
        return SuiteView(
            name, None, "no probes of this suite ran; nothing to report", None, [], [], []
        )
    probes = summary.get("probes")
    n_refused = sum(refused.values())
    codes = ", ".join(f"{c} ×{n}" for c, n in sorted(refused.items()))
    if isinstance(probes, int) and probes > 0 and n_refused >= probes:
        why = (
            "not permitted by the lab's policy"
            if set(refused) == {"PERMISSION_DENIED"}
            else "refused by the lab"
        )
        return SuiteView(
            name,
            summary,
            f"{why}: all {probes} probes were refused ({codes})",
            None,
            [],
            [],
            [],
        )
    note = f"{n_refused} of {probes} probes were refused by the lab ({codes})" if refused else None
    figures: list[tuple[str, str]] = [
        ("probes", _number(probes)),
        ("refused", _number(summary.get("refused"))),
    ]
    tables: list[tuple[str, Sequence[Any], tuple[Column, ...]]] = []
    shares = _mapping(summary.get("influence_share_by_class"))
    if shares:
        rows = [{"data_class": k, "share": v} for k, v in sorted(shares.items())]
        tables.append(
            (
                "Influence share by data class",
                rows,
                (Column("data_class", "data class", _text), Column("share", "share", _percent)),
            )
        )
    sources = _list(summary.get("top_sources"))
    if sources:
        tables.append(("Top training sources", sources, SOURCE_COLUMNS))
    if name == "copyright":
        figures += [
            ("flagged", _number(summary.get("flagged"))),
            ("flag rate", _percent(summary.get("flag_rate"))),
        ]
        tables.append(("Flagged items", _list(summary.get("flagged_items")), FLAGGED_COLUMNS))
        verbatim = _mapping(summary.get("verbatim"))
        if verbatim:
            figures += [
                ("generations with verbatim training text", _number(verbatim.get("with_verbatim"))),
                ("verbatim vs influence disagreements", _number(verbatim.get("disagreements"))),
            ]
            items = _list(verbatim.get("items"))
            tables.append(("Verbatim evidence and influence", items, VERBATIM_COLUMNS))
    elif name == "bias":
        figures.append(("stereotype rate", _percent(summary.get("stereotype_rate"))))
        tables.append(
            ("Log-probability gaps per template", _list(summary.get("gaps")), GAP_COLUMNS)
        )
    elif name == "toxicity":
        figures += [
            ("toxic", _number(summary.get("toxic"))),
            ("toxicity rate", _percent(summary.get("toxicity_rate"))),
            ("95% interval", _interval(summary.get("rate_ci"))),
        ]
        items = _list(summary.get("toxic_items"))
        tables.append(("Toxic completions", items, _generic_columns(items)))
    elif name == "privacy":
        figures += [
            ("generations steered away from withheld text", _number(summary.get("constrained"))),
            ("rate", _percent(summary.get("constrained_rate"))),
            ("95% interval", _interval(summary.get("constrained_rate_ci"))),
            ("control prompts steered", _number(summary.get("control_constrained"))),
            ("outputs with identifiers scrubbed", _number(summary.get("scrubbed_probes"))),
        ]
        items = _list(summary.get("constrained_items"))
        tables.append(("Steered generations", items, _generic_columns(items)))
    wanted = [plot_name(name, "influence"), plot_name(name, "sources")]
    wanted += ["bias-gaps" if name == "bias" else "", "toxicity-rate" if name == "toxicity" else ""]
    return SuiteView(
        name, summary, None, note, figures, tables, [p for p in wanted if p in plots.svgs]
    )


EVALUATION_TITLE = "How trustworthy are these attributions (measured by the lab, signed)"


def _signed(value: Any) -> str:
    return _finite(value, lambda v: f"{v:+.4g}")


def _signed_interval(value: Any) -> str:
    return _pair(value, _signed)


def _difference(value: Any) -> str:
    d = _mapping(value)
    if not d:
        return "–"
    return f"{_signed(d.get('mean'))} {_signed_interval(d.get('ci95'))}"


def _ratio(value: Any) -> str:
    return _finite(value, lambda v: f"{v:.3g}×")


def _ratio_interval(value: Any) -> str:
    return _pair(value, _ratio)


EVALUATION_METHOD_COLUMNS = (
    Column("method", "method", _text),
    Column("step", "step", _text),
    Column("mean", "mean rise of log p(answer)", _signed),
    Column("ci95", "95% interval", _signed_interval),
    Column("n", "questions", _number),
    Column("recall_at_k", "recall@k of stating records", _percent),
)
EVALUATION_RATIO_COLUMNS = (
    Column("pair", "engine vs", lambda v: _text(v).removeprefix("engine/")),
    Column("step", "step", _text),
    Column("ratio", "ratio of means", _ratio),
    Column("ci95", "95% interval", _ratio_interval),
    Column("difference", "difference [95% interval]", _difference),
    Column("n", "questions", _number),
)


@dataclass(frozen=True)
class EvaluationView:
    """What the evaluation section shows, computed once for both renderers."""

    status: str | None
    """Why there is no certificate to show, or None when there is one."""
    lines: list[str]
    tables: list[tuple[str, Sequence[Any], tuple[Column, ...]]]


def evaluation_view(report: Mapping[str, Any]) -> EvaluationView:
    """The report's ``evaluation`` section as sentences and two small tables."""
    section = _mapping(report.get("evaluation"))
    if not section:
        return EvaluationView("this report carries no evaluation section", [], [])
    if section.get("available") is not True:
        reason = _text(section.get("reason")) or "no reason given"
        return EvaluationView(f"No evaluation certificate: {reason}.", [], [])
    measure = _text(section.get("measure"))
    what = (
        "Tail-patch: from the served model, one training step on each of a method's top "
        f"{_number(section.get('top_k'))} records for a question, and how far that raises "
        "log p(answer | question), averaged over the records and the questions. Higher means "
        "the method found records that move the model's answer more; the baselines show what "
        "lexical search (bm25, entity), chance (random) and the records that state the answer "
        "(planted) achieve."
        if measure == "tail_patch"
        else f"Measure: {measure}."
    )
    known = section.get("n_known")
    lines = [
        what,
        f"{_number(section.get('n_questions'))} {_text(section.get('split'))} questions"
        + (
            f" ({_number(known)} answered by the model at p ≥ 1/2)"
            if isinstance(known, int) and not isinstance(known, bool)
            else ""
        )
        + f"; question set {_text(section.get('questions_sha256'))}; snapshot "
        f"{_text(section.get('snapshot_id'))}.",
        "Measured by the lab, not by this campaign: the numbers come from the lab's evaluation "
        f"certificate in its signed, logged answer {_text(section.get('source'))}, and "
        "auditor verify recomputes this section from that answer.",
    ]
    tables: list[tuple[str, Sequence[Any], tuple[Column, ...]]] = [
        ("Each method's mean tail-patch", _list(section.get("methods")), EVALUATION_METHOD_COLUMNS),
    ]
    ratios = _list(section.get("ratios"))
    if ratios:
        tables.append(("The engine against each baseline", ratios, EVALUATION_RATIO_COLUMNS))
    return EvaluationView(None, lines, tables)


def verification_line(report: Mapping[str, Any]) -> tuple[str, str]:
    """(css class, sentence) for the build-time verification status."""
    check = _mapping(report.get("verification"))
    status = check.get("status")
    if status == "verified":
        return "ok", (
            f"All {_number(check.get('answers'))} answers verified at build time against lab "
            f"key {_text(check.get('lab_key_id'))}: lab signatures, auditor signatures, "
            f"request binding, ledger inclusion, consistency of "
            f"{_number(check.get('heads'))} tree heads with the final head of size "
            f"{_number(check.get('final_tree_size'))}; every finding recomputed."
        )
    if status == "failed":
        return "bad", f"VERIFICATION FAILED at build time: {_text(check.get('error'))}"
    return "warn", (
        "Not verified at build time "
        f"({_text(check.get('reason')) or 'no check recorded'}); every answer was verified "
        "by the client when it arrived."
    )


def header_rows(report: Mapping[str, Any]) -> list[tuple[str, str]]:
    """Label/value pairs identifying the campaign, the lab and the auditor."""
    campaign = _mapping(report.get("campaign"))
    lab = _mapping(report.get("lab"))
    auditor = _mapping(report.get("auditor"))
    ledger = _mapping(report.get("ledger"))
    rows = [
        ("campaign", _text(campaign.get("name"))),
        ("campaign hash", _text(campaign.get("campaign_hash"))),
        ("campaign file sha256", _text(campaign.get("campaign_file_sha256"))),
        ("seed", _text(campaign.get("seed"))),
        ("started", _when(campaign.get("started_ms") or campaign.get("started"))),
        ("finished", _when(campaign.get("finished_ms") or campaign.get("finished"))),
        ("lab snapshot", _text(lab.get("snapshot_id"))),
        ("lab model hash", _text(lab.get("model_hash"))),
        ("lab policy hash", _text(lab.get("policy_hash"))),
        ("auditor", _text(auditor.get("id"))),
        ("auditor key", _text(auditor.get("public_key"))),
        ("client version", _text(campaign.get("client_version"))),
        ("report generated", _when(report.get("generated_ms"))),
    ]
    policies = [str(p) for p in _list(lab.get("policy_hashes"))]
    if len(policies) > 1:
        rows.append(("POLICY CHANGED mid-campaign", " → ".join(policies)))
    stop = campaign.get("stop") or campaign.get("stop_reason")
    if stop:
        rows.append(("stopped early", _text(stop)))
    if campaign.get("status") not in (None, "complete"):
        rows.append(("campaign status", _text(campaign.get("status"))))
    head = _final_head(ledger)
    if head:
        rows.append(("ledger final head", head))
    refused = _mapping(ledger.get("refused"))
    if refused:
        rows.append(
            (
                "ledger consistency NOT proven",
                f"the lab refused tree heads to this role ({_text(refused.get('code'))})",
            )
        )
    return rows


def _final_head(ledger: Mapping[str, Any]) -> str:
    """The final tree head's size and root, read (not verified) for display."""
    import base64

    from auditor_client.wire._proto import audit_pb2 as pb

    exchange = _mapping(ledger.get("final_head"))
    try:
        response = pb.SignedResponse.FromString(base64.b64decode(str(exchange["response"])))
        head = pb.ResponseBody.FromString(response.body).tree_head.tree_head
    except Exception:  # display only; verification reports the real problem
        return ""
    return f"size {head.tree_size}, root {head.root_hash.hex()}"


# --- HTML ---------------------------------------------------------------------------------

CSS = """
body{font:15px/1.45 system-ui,-apple-system,'Segoe UI',sans-serif;margin:2rem auto;
max-width:72rem;padding:0 1rem;color:#1d1d1f}
h1{font-size:1.6rem;margin-bottom:.2rem}h2{border-bottom:2px solid #ddd;padding-bottom:.2rem;
margin-top:2.2rem}h3{font-size:1.05rem;margin-top:1.4rem}
table{border-collapse:collapse;margin:.5rem 0;font-size:.9rem}
td,th{border:1px solid #ddd;padding:.25rem .5rem;text-align:left;vertical-align:top}
th{background:#f4f4f6}td.num{text-align:right;font-variant-numeric:tabular-nums}
table.meta td:first-child{font-weight:600;white-space:nowrap}
code,.hash{font-family:ui-monospace,Menlo,Consolas,monospace;font-size:.85rem;
word-break:break-all}
.status{padding:.6rem .9rem;border-radius:6px;margin:1rem 0;font-weight:600}
.ok{background:#e6f4ea;color:#14532d}.bad{background:#fde8e8;color:#7f1d1d}
.warn{background:#fff6e0;color:#713f12}.muted{color:#666}
.figures span{display:inline-block;margin-right:1.6rem}.figures b{font-size:1.2rem}
figure{margin:.8rem 0}svg{max-width:100%;height:auto}
"""


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _html_table(rows: Sequence[Any], columns: Sequence[Column]) -> str:
    if not rows:
        return '<p class="muted">none</p>'
    head = "".join(f"<th>{_e(c.header)}</th>" for c in columns)
    body = []
    for row in rows:
        row = _mapping(row)
        cells = []
        for c in columns:
            value = row.get(c.key)
            cls = ' class="num"' if isinstance(value, int | float) else ""
            cells.append(f"<td{cls}>{_e(c.fmt(value))}</td>")
        body.append(f"<tr>{''.join(cells)}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def render_html(report: Mapping[str, Any], plots: Plots) -> str:
    """The report as one HTML page that references nothing outside itself."""
    campaign = _mapping(report.get("campaign"))
    cls, line = verification_line(report)
    meta = "".join(
        f'<tr><td>{_e(k)}</td><td class="hash">{_e(v)}</td></tr>' for k, v in header_rows(report)
    )
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        '<meta http-equiv="Content-Security-Policy" content="default-src \'none\'; '
        "style-src 'unsafe-inline'; img-src data:\">",
        f"<title>Audit report: {_e(_text(campaign.get('name')) or 'campaign')}</title>",
        f"<style>{CSS}</style></head><body>",
        f"<h1>Audit report: {_e(_text(campaign.get('name')) or 'campaign')}</h1>",
        f'<div class="status {cls}">{_e(line)}</div>',
        f'<table class="meta">{meta}</table>',
        '<p class="muted">Re-verify offline with the lab\'s public key: '
        "<code>auditor verify report.json --lab-key ed25519:…</code></p>",
    ]
    if plots.note:
        parts.append(f'<p class="muted">{_e(plots.note)}</p>')
    parts.append(f'<h2 id="evaluation">{_e(EVALUATION_TITLE)}</h2>')
    evaluation = evaluation_view(report)
    if evaluation.status:
        parts.append(f'<p class="status warn">{_e(evaluation.status)}</p>')
    parts += [f"<p>{_e(line)}</p>" for line in evaluation.lines]
    for title, rows, columns in evaluation.tables:
        parts.append(f"<h3>{_e(title)}</h3>")
        parts.append(_html_table(rows, columns))
    for view in suite_views(report, plots):
        parts.append(f"<h2>{_e(view.name)}</h2>")
        if view.status:
            parts.append(f'<p class="status warn">{_e(view.status)}</p>')
            continue
        if view.note:
            parts.append(f'<p class="status warn">{_e(view.note)}</p>')
        figures = "".join(f"<span>{_e(k)}: <b>{_e(v)}</b></span>" for k, v in view.figures)
        parts.append(f'<p class="figures">{figures}</p>')
        for name in view.plots:
            parts.append(f"<figure>{_inline_svg(plots.svgs[name])}</figure>")
        for title, rows, columns in view.tables:
            parts.append(f"<h3>{_e(title)}</h3>")
            parts.append(_html_table(rows, columns))
    parts.append("<h2>Probes</h2>")
    parts.append(_html_table(_probe_rows(report), PROBE_COLUMNS))
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def _inline_svg(svg: str) -> str:
    """An SVG file's text as inline HTML: the HTML parser supplies the SVG and xlink
    namespaces itself, so the declarations (URIs, never fetched, but URIs all the same) go,
    leaving no address in the page except the lab's own escaped strings."""
    end = svg.index(">") + 1
    return re.sub(r'\s+xmlns(?::xlink)?="[^"]*"', "", svg[:end]) + svg[end:]


PROBE_COLUMNS = (
    Column("suite", "suite", _text),
    Column("probe_id", "probe", _text),
    Column("answers", "signed answers", _number),
    Column("outcome", "outcome", _text),
)


def _probe_rows(report: Mapping[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for probe in _list(report.get("probes")):
        probe = _mapping(probe)
        refused = _mapping(probe.get("findings")).get("refused")
        rows.append(
            {
                "suite": probe.get("suite"),
                "probe_id": probe.get("probe_id"),
                "answers": len(_list(probe.get("exchanges"))),
                "outcome": f"refused: {refused}" if refused else "answered",
            }
        )
    return rows


# --- Markdown -----------------------------------------------------------------------------

_MD_SPECIAL = re.compile(r"([\\`*_\[\]{}()#+!|~])")


def _m(value: Any) -> str:
    """Escape for a Markdown table cell: HTML-escaped, no markup, no line breaks."""
    text = html.escape(" ".join(str(value).split()), quote=False)
    return _MD_SPECIAL.sub(r"\\\1", text)


def _md_table(rows: Sequence[Any], columns: Sequence[Column]) -> list[str]:
    if not rows:
        return ["_none_", ""]
    lines = [
        "| " + " | ".join(_m(c.header) for c in columns) + " |",
        "|" + "|".join("---" for _ in columns) + "|",
    ]
    for row in rows:
        row = _mapping(row)
        lines.append("| " + " | ".join(_m(c.fmt(row.get(c.key))) for c in columns) + " |")
    return [*lines, ""]


def render_markdown(report: Mapping[str, Any], plots: Plots, plots_dir: str) -> str:
    """The same findings as Markdown tables, linking the charts written to ``plots_dir``."""
    campaign = _mapping(report.get("campaign"))
    _, line = verification_line(report)
    out = [
        f"# Audit report: {_m(_text(campaign.get('name')) or 'campaign')}",
        "",
        f"**{_m(line)}**",
        "",
    ]
    out += _md_table(
        [{"k": k, "v": v} for k, v in header_rows(report)],
        (Column("k", "", _text), Column("v", "", _text)),
    )
    out += ["Re-verify offline: `auditor verify report.json --lab-key ed25519:…`", ""]
    if plots.note:
        out += [f"_{_m(plots.note)}_", ""]
    out += [f"## {_m(EVALUATION_TITLE)}", ""]
    evaluation = evaluation_view(report)
    if evaluation.status:
        out += [f"**{_m(evaluation.status)}**", ""]
    for line in evaluation.lines:
        out += [_m(line), ""]
    for title, rows, columns in evaluation.tables:
        out += [f"### {_m(title)}", ""]
        out += _md_table(rows, columns)
    for view in suite_views(report, plots):
        out += [f"## {_m(view.name)}", ""]
        if view.status:
            out += [f"**{_m(view.status)}**", ""]
            continue
        if view.note:
            out += [f"**{_m(view.note)}**", ""]
        out += ["; ".join(f"{_m(k)}: **{_m(v)}**" for k, v in view.figures), ""]
        for name in view.plots:
            out += [f"![{_m(name)}]({plots_dir}/{name}.svg)", ""]
        for title, rows, columns in view.tables:
            out += [f"### {_m(title)}", ""]
            out += _md_table(rows, columns)
    out += ["## Probes", ""]
    out += _md_table(_probe_rows(report), PROBE_COLUMNS)
    return "\n".join(out)


def _mapping(obj: Any) -> Mapping[str, Any]:
    return obj if isinstance(obj, Mapping) else {}


def _list(obj: Any) -> list[Any]:
    return list(obj) if isinstance(obj, list | tuple) else []
