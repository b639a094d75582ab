"""`visprep report`: every section on a real demo workspace, rendered in headless Chromium without console errors
or failed loads; status and report agree with the tables; hostile text is shown, not run; bounded at scale.

The browser is driven over the DevTools protocol on a pipe (`--remote-debugging-pipe`), so console messages by
level, exceptions, and failed or off-page resource loads are all observed, not guessed from log lines.
"""

from __future__ import annotations

import base64
import csv
import html.parser
import io
import json
import os
import select
import shutil
import subprocess
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image
from typer.testing import CliRunner

from visprep.cli import app
from visprep.demo.sources import write_demo_sources
from visprep.events.simulate import SimConfig, simulate
from visprep.events.stage import ingest_event_files
from visprep.labels.demo import build_demo_judgments
from visprep.labels.stage import labels_stage
from visprep.pipeline import run_pipeline
from visprep.quality.popularity import popularity_stage
from visprep.report import SECTIONS, ReportLimits, build_report, workspace_counts
from visprep.report.page import table
from visprep.schema import EVAL_METRICS, EXPERIMENT_RESULTS, schema_for
from visprep.workspace import QuarantineRecord, Workspace, conform

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
needs_chromium = pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (Debian package "
                                                              "`chromium`; `make install-dev` installs it)")
HOSTILE = '<script>console.error("quarantine value ran")</script><img src=x onerror="console.error(1)">'


# --- a small demo workspace with every kind of data ------------------------------------------------------------


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Workspace:
    root = tmp_path_factory.mktemp("report")
    ws = Workspace(root / "ws")
    ws.root.mkdir()
    ws.config_path.write_text("[export]\nmax_count = 40\n[inspect]\nworkers = 2\nbatch_size = 32\n"
                              '[embed]\noptions = { profile = "imagenet-64" }\n'
                              '[synthetic]\nbackgrounds = ["texture"]\nreframe_scales = [0.8]\nhue_shifts_deg = [180.0]\n')
    src = write_demo_sources(root / "src", n_products=40, seed=3)
    run_pipeline(ws, src.catalog_files)
    # Labels: the demo's judgments plus a rater who disagrees by 2+ grades on a few items (disputed pairs).
    judged = build_demo_judgments(ws, seed=0, n_queries=12)
    rows = list(csv.DictReader(judged.open(encoding="utf-8")))
    disputed = judged.with_name("disputed.csv")
    with disputed.open("w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        for r in rows[:6]:
            w.writerow({**r, "rater_id": "rater_z", "grade": str(4 - int(r["grade"]) if r["grade"] != "2" else 0)})
    labels_stage(ws, [judged, disputed])
    # Behaviour: simulated events (their own product ids; the report reads the tables, not the catalog).
    ev, _ = simulate(SimConfig(searches=400, seed=1, products=80))
    pq.write_table(ev, root / "events.parquet")
    ingest_event_files(ws, [root / "events.parquet"])
    popularity_stage(ws)
    # Evaluation and experiment rows with known numbers (training a model here would take minutes).
    ws.write_table("eval_metrics", pa.Table.from_pylist(
        [{"model": m, "metric": k, "category": c, "value": v, "ci_low": v - 0.05, "ci_high": v + 0.05,
          "n_queries": 12 if c == "*" else 6, "run_id": f"20240101T000000-evaluate-{m}"}
         for m, base in (("frozen", 0.5), ("tuned", 0.6)) for k in ("ndcg@10", "map")
         for c, v in (("*", base), ("Apparel", base - 0.1), ("Footwear", base + 0.1))], schema=EVAL_METRICS))
    ws.write_table("experiment_results", pa.Table.from_pylist(
        [{"run_id": "20240101T000000-experiment-abc", "variant": v, "status": "ok", "control": ctl, "seeds": 1,
          "steps": 10, "metric": k, "value": val, "ci_low": val - 0.1, "ci_high": val + 0.1,
          "diff_vs_control": d, "diff_ci_low": None if d is None else d - 0.02,
          "diff_ci_high": None if d is None else d + 0.02, "queries": 12}
         for v, ctl, val, d in (("frozen", None, 0.5, None), ("in_batch", "frozen", 0.6, 0.1))
         for k in ("ndcg@10", "recall@1", "recall@10", "map")], schema=EXPERIMENT_RESULTS))
    # A quarantined value that is markup: the page must show it as text.
    ws.quarantine([QuarantineRecord(reason="hostile_value", detail=HOSTILE, record_id="evil", field="title",
                                    value=HOSTILE)], stage="catalog", run_id="test", key="hostile")
    return ws


@pytest.fixture(scope="module")
def built(demo: Workspace) -> tuple[Workspace, Any, str]:
    result = build_report(demo)
    print(f"report of the test demo: {result.seconds:.1f} s, {result.bytes / 1e6:.2f} MB")
    return demo, result, result.path.read_text(encoding="utf-8")


class _Page(html.parser.HTMLParser):
    """Collects sections, figures and their captions, image sources, links, scripts and table cells."""

    def __init__(self) -> None:
        super().__init__()
        self.sections: list[str] = []
        self.figures = 0
        self.captions: list[str] = []
        self.srcs: list[str] = []
        self.hrefs: list[str] = []
        self.scripts = 0
        self.tables: list[list[list[str]]] = []
        self._caption: list[str] | None = None
        self._cell: list[str] | None = None
        self._section: str | None = None
        self.table_section: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "section":
            self.sections.append(a.get("id") or "")
            self._section = a.get("id")
        elif tag == "figure":
            self.figures += 1
        elif tag == "figcaption":
            self._caption = []
        elif tag == "img":
            self.srcs.append(a.get("src") or "")
        elif tag in ("a", "link"):
            self.hrefs.append(a.get("href") or "")
        elif tag == "script":
            self.scripts += 1
        elif tag == "table":
            self.tables.append([])
            self.table_section.append(self._section or "")
        elif tag == "tr":
            self.tables[-1].append([])
        elif tag in ("td", "th"):
            self._cell = []

    def handle_endtag(self, tag: str) -> None:
        if tag == "figcaption" and self._caption is not None:
            self.captions.append("".join(self._caption).strip())
            self._caption = None
        elif tag in ("td", "th") and self._cell is not None:
            self.tables[-1][-1].append("".join(self._cell))
            self._cell = None

    def handle_data(self, data: str) -> None:
        if self._caption is not None:
            self._caption.append(data)
        if self._cell is not None:
            self._cell.append(data)


def parse(page: str) -> _Page:
    p = _Page()
    p.feed(page)
    return p


# --- the page itself ---------------------------------------------------------------------------------------------


def test_every_section_has_data_and_every_figure_a_caption(built: tuple) -> None:
    ws, result, page = built
    p = parse(page)
    assert p.sections == list(SECTIONS)
    assert all(result.sections.values()), result.sections  # the demo fixture has data for every section
    assert 'class="empty"' not in page.split('id="labels"')[0]  # no "no data" notice before the labels section
    assert p.figures >= 20 and len(p.captions) == p.figures and all(len(c) > 30 for c in p.captions)
    assert result.path == ws.root / "report" / "index.html" and result.bytes == len(page.encode())
    assert result.thumbnails >= 20
    for needle in ("Sample positive pairs", "Mined hard negatives", "What the false-negative guard dropped",
                   "Popularity long tail", "Click-through by position", "Pairs by signal", "Rater agreement",
                   "Disputed pairs", "Per category", "Experiment", "Largest groups", "EXIF orientation"):
        assert needle in page, needle
    assert "rater_z" in page  # the disagreeing rater is listed


def test_page_is_self_contained_and_its_images_decode(built: tuple) -> None:
    _, _, page = built
    p = parse(page)
    assert p.scripts == 0
    assert all(h.startswith(("#", "data:")) for h in p.hrefs), p.hrefs
    assert p.srcs and all(s.startswith(("data:image/jpeg;base64,", "data:image/png;base64,")) for s in p.srcs)
    thumbs = 0
    for s in p.srcs:
        img = Image.open(io.BytesIO(base64.b64decode(s.split(",", 1)[1])))
        img.load()
        if img.format == "JPEG":
            thumbs += 1
            assert max(img.size) <= 96
    assert thumbs >= 20
    assert len(page.encode()) < 2_000_000


def test_hostile_quarantine_text_is_shown_not_run(built: tuple) -> None:
    _, _, page = built
    assert "<script" not in page and "onerror=" not in page.replace("onerror=&quot;", "")
    assert "&lt;script&gt;console.error(&quot;quarantine value ran&quot;)&lt;/script&gt;" in page
    cells = [c for t in parse(page).tables for row in t for c in row]
    assert HOSTILE[:120] in {c[:120] for c in cells}  # the text reads back exactly as it was quarantined


def test_status_and_report_agree_with_the_tables(built: tuple) -> None:
    ws, _, page = built
    res = CliRunner().invoke(app, ["status", "-w", str(ws.root), "--json"])
    assert res.exit_code == 0, res.output
    status = json.loads(res.output)
    # The oracle: every table read in full, the quarantine counted row by row.
    want_tables = {name: ws.read_table(name).num_rows for name in ws.table_names()}
    q = ws.read_table("quarantine").to_pylist()
    want_q = Counter((r["stage"], r["reason"]) for r in q)
    assert status["tables"] == want_tables
    assert {(e["stage"], e["reason"]): e["count"] for e in status["quarantine"]} == want_q
    p = parse(page)
    overview = p.tables[p.table_section.index("overview")]
    assert {row[0]: int(row[1].replace(",", "")) for row in overview[1:]} == want_tables
    quarantine = p.tables[p.table_section.index("quarantine")]
    assert [(r[0], r[1], int(r[2].replace(",", ""))) for r in quarantine[1:]] == \
        [(e["stage"], e["reason"], e["count"]) for e in status["quarantine"]]
    assert workspace_counts(ws).quarantined == len(q)


def test_a_workspace_without_data_says_so_in_every_section(tmp_path: Path) -> None:
    ws = Workspace(tmp_path / "ws")
    ws.root.mkdir()
    result = build_report(ws)
    page = result.path.read_text(encoding="utf-8")
    assert parse(page).sections == list(SECTIONS)
    assert result.sections == {name: name == "overview" for name in SECTIONS}
    assert page.count('class="empty"') == len(SECTIONS)
    assert "visprep catalog" in page and "visprep events" in page and "visprep labels" in page


def test_bad_arguments_are_refused_with_the_valid_names(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        build_report(Workspace(tmp_path / "missing"))
    ws = Workspace(tmp_path / "ws")
    ws.root.mkdir()
    with pytest.raises(ValueError, match=r"unknown report section\(s\) \['nope'\]; valid sections: overview, "):
        build_report(ws, sections=["overview", "nope"])
    with pytest.raises(ValueError, match=r"report limit gallery must be a positive int.*got 0"):
        ReportLimits(gallery=0)
    with pytest.raises(ValueError, match=r"report limit tree_children .* got \(\)"):
        ReportLimits(tree_children=())
    out = tmp_path / "elsewhere.html"
    res = CliRunner().invoke(app, ["report", "-w", str(ws.root), "--out", str(out)])
    assert res.exit_code == 0 and out.exists() and "no data yet for: catalog" in res.output, res.output


@given(st.text(max_size=300))
@settings(max_examples=150, deadline=None)
def test_table_cells_read_back_as_the_text_given(text: str) -> None:
    # Whatever a record holds (markup, quotes, control characters), the cell shows that text, cut at 200.
    text = text.replace("\r", "")  # HTML parsing normalises CR; it is not markup
    cells = [c for t in parse(table(["value"], [(text,)])).tables for row in t[1:] for c in row]
    want = text if len(text) <= 200 else text[:199] + "…"
    assert cells == [want]


# --- at scale ------------------------------------------------------------------------------------------------------


def _ids(prefix: str, ints: np.ndarray) -> pa.Array:
    """`prefix` followed by each int, built in Arrow (a million strings without a Python loop)."""
    return pc.binary_join_element_wise(prefix, pa.array(ints).cast(pa.string()), "")


def _pick(values: list, idx: np.ndarray) -> pa.Array:
    """values[idx] as an Arrow array."""
    return pa.array(values).take(pa.array(idx))


def write_scale_workspace(root: Path, n_products: int, *, n_images: int = 12, seed: int = 0) -> Workspace:
    """A workspace whose tables hold `n_products` products (and as many pairs, negatives, groups, interaction
    pairs; twice as many events; a quarter as many quarantined records) over only `n_images` stored photos."""
    rng = np.random.default_rng(seed)
    ws = Workspace(root)
    ws.tables_dir.mkdir(parents=True)
    n = n_products
    image_ids = []
    for k in range(n_images):
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 255, (48 + k, 64, 3), dtype=np.uint8)).save(buf, "JPEG")
        image_ids.append(ws.store.put(buf.getvalue(), "jpg"))

    def put(name: str, cols: dict) -> None:
        pq.write_table(conform(pa.table(cols), schema_for(name)), ws.table_path(name))

    pid = _ids("p", np.arange(n))
    tops = _ids("top", rng.integers(0, 8, n))
    mids = pc.binary_join_element_wise(tops, _ids("/m", rng.integers(0, 10, n)), "")
    leaves = pc.binary_join_element_wise(mids, _ids("/l", rng.integers(0, 10, n)), "")
    # Three levels per product: one flat array of values cut every 3, no Python loop over the rows.
    flat = pa.concat_arrays([tops, mids, leaves]).take(pa.array(np.arange(3 * n).reshape(3, n).T.ravel()))
    paths = pa.ListArray.from_arrays(pa.array(np.arange(0, 3 * n + 1, 3, dtype=np.int32)), flat)
    put("products", {"product_id": pid, "title": pc.binary_join_element_wise("Title ", pid, ""),
                     "category": tops, "category_path": paths, "top_category": tops})
    urls = pc.binary_join_element_wise("file:///img/", pid, "")
    img = rng.integers(0, n_images, n)
    put("product_images", {"product_id": pid, "position": np.zeros(n, np.int32), "url": urls,
                           "source": _pick(["catalog", "synthetic"], (rng.random(n) < 0.2).astype(int))})
    put("urls", {"url": urls, "status": _pick(["ok"], np.zeros(n, int)), "image_id": _pick(image_ids, img)})
    put("images", {"image_id": image_ids, "status": ["ok"] * n_images, "format": ["jpeg"] * n_images,
                   "width": [64] * n_images, "height": [48 + k for k in range(n_images)],
                   "bytes": [3000] * n_images, "blur": rng.random(n_images) * 500,
                   "exif_orientation": [1] * (n_images - 1) + [6]})
    group = _ids("p", np.arange(n) // 3 * 3)
    put("product_groups", {"product_id": pid, "group_id": group, "canonical_product_id": group,
                           "group_size": np.full(n, 3, np.int32)})
    put("duplicate_edges", {"product_a": group, "product_b": pid, "signal": _pick(["phash"], np.zeros(n, int)),
                            "distance": rng.integers(0, 10, n).astype(np.int16), "accepted": rng.random(n) < 0.7})
    put("pairs", {"anchor_id": _pick(image_ids, img), "positive_id": _pick(image_ids, np.roll(img, 1)),
                  "kind": _pick(["same_product", "image_title"], (rng.random(n) < 0.3).astype(int)),
                  "positive_text": pc.binary_join_element_wise("Title ", pid, ""),
                  "anchor_product_id": pid, "positive_product_id": pid})
    put("negatives", {"anchor_id": _pick(image_ids, img), "negative_id": _pick(image_ids, np.roll(img, 7)),
                      "kind": _pick(["ann"], np.zeros(n, int)), "score": rng.random(n).astype(np.float32),
                      "anchor_product_id": pid, "negative_product_id": pid.take(pa.array(np.roll(np.arange(n), 7)))})
    nq = n // 4
    put("quarantine", {"stage": _pick(["catalog", "fetch"], rng.integers(0, 2, nq)),
                       "reason": _ids("reason", rng.integers(0, 6, nq)), "record_id": pid.slice(0, nq),
                       "field": _pick(["title"], np.zeros(nq, int)), "value": _pick(["x" * 50], np.zeros(nq, int)),
                       "detail": _pick(["a reason"], np.zeros(nq, int))})
    ne = 2 * n
    put("events", {"event_id": _ids("e", np.arange(ne)),
                   "ts": pa.array(np.zeros(ne, "datetime64[us]")).cast(pa.timestamp("us", tz="UTC")),
                   "day": pa.array(np.zeros(ne, "datetime64[D]")), "user_id": _pick(["u"], np.zeros(ne, int)),
                   "session_id": _pick(["s"], np.zeros(ne, int)),
                   "type": _pick(["impression", "click"], (rng.random(ne) < 0.1).astype(int)),
                   "product_id": pid.take(pa.array(np.arange(ne) // 2)),
                   "position": rng.integers(1, 11, ne).astype(np.int32)})
    inter = rng.zipf(1.5, n).clip(max=10_000)
    put("interaction_pairs", {"anchor_id": pid, "anchor_type": _pick(["product"], np.zeros(n, int)),
                              "product_id": pid, "kind": _pick(["click", "purchase"], (rng.random(n) < 0.2).astype(int)),
                              "count": inter, "raw_weight": inter.astype(float), "debiased_weight": inter * 0.5})
    put("popularity", {"product_id": pid, "exposures": inter * 10, "interactions": inter,
                       "weight": (1.0 + inter) ** -0.5})
    return ws


def test_report_stays_small_and_fast_on_a_200k_product_workspace(tmp_path: Path) -> None:
    ws = write_scale_workspace(tmp_path / "ws", 200_000)
    t0 = time.perf_counter()
    result = build_report(ws)
    seconds = time.perf_counter() - t0
    print(f"200k products: report built in {seconds:.1f} s, {result.bytes / 1e6:.2f} MB")
    assert seconds < 45  # ~3.5 s on a loaded 2-core machine; the bound leaves room for a slower CI runner
    assert result.bytes < 2_000_000
    page = result.path.read_text(encoding="utf-8")
    assert "200,000" in page  # the products row of the overview: counted, not sampled
    assert "50,000 refused records" in page
    assert all(result.sections[s] for s in ("catalog", "quarantine", "duplicates", "pairs", "behaviour"))
    # Bounded galleries: the thumbnails come from the 12 stored photos, each inlined once per use at most.
    assert page.count("data:image/jpeg") <= 120


# --- in a real browser -------------------------------------------------------------------------------------------


def _above_nine(fd: int) -> int:
    """A copy of `fd` numbered 10 or more (close-on-exec); `fd` itself is closed."""
    import fcntl

    moved = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10)
    os.close(fd)
    return moved


class Chromium:
    """Headless Chromium driven over the DevTools protocol on a pipe: commands on its fd 3, replies on its fd 4,
    each message JSON ended by a NUL byte."""

    def __init__(self, profile: Path, log: Path) -> None:
        to_browser_r, self._w = os.pipe()
        self._r, from_browser_w = os.pipe()
        # The child's ends move above 9 first, so the remap to 3 and 4 below cannot overwrite one with the other.
        to_browser_r, from_browser_w = (_above_nine(to_browser_r), _above_nine(from_browser_w))
        args = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                "--disable-component-update", "--disable-default-apps", "--disable-sync", "--no-first-run",
                # Any host name fails to resolve: a page reaching for the network shows up as a failed load.
                "--host-resolver-rules=MAP * ~NOTFOUND", f"--user-data-dir={profile}", "--remote-debugging-pipe",
                "--window-size=1280,900", "about:blank"]
        self._log = log.open("wb")
        # bash, not sh: dash cannot redirect from a descriptor above 9.
        remap = f"3<&{to_browser_r} 4>&{from_browser_w} {to_browser_r}<&- {from_browser_w}>&-"
        self.proc = subprocess.Popen(["bash", "-c", f'exec "$0" "$@" {remap}', CHROMIUM, *args],
                                     pass_fds=(to_browser_r, from_browser_w),
                                     stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT)
        os.close(to_browser_r)
        os.close(from_browser_w)
        self._buf = b""
        self._id = 0
        self.events: list[dict[str, Any]] = []

    def _read(self, deadline: float) -> dict[str, Any]:
        while b"\0" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self._r], [], [], left)[0]:
                raise TimeoutError("chromium did not answer in time")
            chunk = os.read(self._r, 1 << 20)
            if not chunk:
                raise RuntimeError("chromium closed the DevTools pipe")
            self._buf += chunk
        msg, self._buf = self._buf.split(b"\0", 1)
        return json.loads(msg)

    def send(self, method: str, params: dict | None = None, *, session: str | None = None,
             timeout: float = 60.0) -> dict[str, Any]:
        self._id += 1
        msg: dict[str, Any] = {"id": self._id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        os.write(self._w, json.dumps(msg).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            m = self._read(deadline)
            if m.get("id") == self._id:
                if "error" in m:
                    raise RuntimeError(f"{method}: {m['error']}")
                return m.get("result", {})
            self.events.append(m)

    def wait_for(self, method: str, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while not any(e.get("method") == method for e in self.events):
            self.events.append(self._read(deadline))

    def close(self) -> None:
        try:
            self.send("Browser.close", timeout=10)
        except (RuntimeError, TimeoutError, OSError):
            pass
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        os.close(self._r)
        os.close(self._w)
        self._log.close()


def render_in_chromium(page: Path, tmp: Path, *, screenshot: Path | None = None) -> dict[str, Any]:
    """Load `page` in headless Chromium; return its console errors, exceptions, failed and off-page loads, the
    section ids in the DOM and how many images did not decode; optionally save a full-page screenshot."""
    browser = Chromium(tmp / "chromium-profile", tmp / "chromium.log")
    try:
        target = browser.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = browser.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        for domain in ("Runtime", "Log", "Network", "Page"):
            browser.send(f"{domain}.enable", session=session)
        browser.send("Page.navigate", {"url": page.as_uri()}, session=session)
        browser.wait_for("Page.loadEventFired")
        dom = json.loads(browser.send("Runtime.evaluate", {"returnByValue": True, "expression": """JSON.stringify({
            sections: [...document.querySelectorAll('section[id]')].map(s => s.id),
            images: document.images.length,
            broken: [...document.images].filter(i => !(i.complete && i.naturalWidth > 0)).length})"""},
            session=session)["result"]["value"])
        if screenshot is not None:
            size = browser.send("Page.getLayoutMetrics", session=session)["cssContentSize"]
            shot = browser.send("Page.captureScreenshot", {
                "format": "png", "captureBeyondViewport": True,
                "clip": {"x": 0, "y": 0, "width": size["width"], "height": min(size["height"], 12000), "scale": 1}},
                session=session)
            screenshot.write_bytes(base64.b64decode(shot["data"]))
    finally:
        browser.close()
    ev = [e for e in browser.events if e.get("sessionId") == session]

    def params(method: str) -> list[dict[str, Any]]:
        return [e["params"] for e in ev if e.get("method") == method]

    return {
        **dom,
        "console_errors": [p["args"] for p in params("Runtime.consoleAPICalled") if p["type"] in ("error", "assert")]
        + [p["entry"]["text"] for p in params("Log.entryAdded") if p["entry"]["level"] == "error"],
        "exceptions": [p["exceptionDetails"].get("text") for p in params("Runtime.exceptionThrown")],
        "failed_loads": [p.get("errorText") for p in params("Network.loadingFailed")],
        "off_page_requests": [p["request"]["url"] for p in params("Network.requestWillBeSent")
                              if not p["request"]["url"].startswith(("data:", page.as_uri()))],
    }


@needs_chromium
def test_browser_check_catches_errors_and_failed_loads(tmp_path: Path) -> None:
    # The check below must be able to fail: a page with each kind of fault it looks for.
    bad = tmp_path / "bad.html"
    bad.write_text('<!DOCTYPE html><html><body><section id="a">x</section><img src="missing.png">'
                   '<img src="http://example.invalid/x.png"><script>console.error("boom");'
                   'throw new Error("thrown")</script></body></html>')
    got = render_in_chromium(bad, tmp_path)
    assert got["console_errors"] and got["exceptions"] and len(got["failed_loads"]) >= 2, got
    assert any("example.invalid" in u for u in got["off_page_requests"]), got
    assert got["sections"] == ["a"] and got["broken"] == 2


@needs_chromium
def test_report_renders_in_chromium_without_errors(built: tuple, tmp_path: Path) -> None:
    _, result, _ = built
    shot = tmp_path / "report.png"
    got = render_in_chromium(result.path, tmp_path, screenshot=shot)
    assert got["console_errors"] == [] and got["exceptions"] == [], got
    assert got["failed_loads"] == [] and got["off_page_requests"] == [], got
    assert got["sections"] == list(SECTIONS)
    assert got["images"] >= 40 and got["broken"] == 0
    img = Image.open(shot)
    assert img.format == "PNG" and img.width >= 1000 and img.height > 3000
    small = np.asarray(img.convert("RGB").resize((200, 600)))
    assert small.std() > 20 and len(np.unique(small.reshape(-1, 3), axis=0)) > 200  # not a blank page


# --- progress bars -----------------------------------------------


def test_progress_bars_count_each_stage_run_and_stop_their_clocks(monkeypatch: pytest.MonkeyPatch) -> None:
    from rich.console import Console

    from visprep import cli

    now = [0.0]
    console = Console(record=True, width=100, force_terminal=False, get_time=lambda: now[0])
    monkeypatch.setattr(cli, "console", console)
    with cli._progress() as bar:  # what the pipeline does: a bar per stage run, inspect twice in one pass
        catalog = bar("catalog")
        catalog(1000, 0)  # total unknown while reading
        catalog(500, 0)
        now[0] = 2.0
        inspect = bar("inspect")
        for t in (2.0, 50.0, 98.0):
            now[0] = t
            inspect(10, 30)
        bar("dedup")  # a stage that reports no progress
        now[0] = 500.0  # a long later stage: the earlier bars' clocks must not run on
        again = bar("inspect")
        again(2, 4)
        now[0] = 501.0
        again(2, 4)
        now[0] = 600.0
    lines = [line.split() for line in console.export_text().splitlines()]
    got = {parts[0] + ("" if parts[1].startswith("━") else " " + parts[1]): parts[-3:] for parts in lines}
    assert got["catalog"][0] == "1500/1500" and got["catalog"][1] == "0:00:02", got
    assert got["inspect"][0] == "30/30" and got["inspect"][1] == "0:01:36", got
    assert got["inspect 2"][0] == "4/4" and got["inspect 2"][1] == "0:00:01", got
