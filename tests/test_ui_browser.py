"""The web UI in a real headless browser (Debian's chromium, driven by Playwright): train, watch, list, abort.

    .venv/bin/python -m pytest -q tests/test_ui_browser.py        (needs /usr/bin/chromium: apt-get install -y chromium)

A `studio webui` server runs as a subprocess in a scratch working folder; the test clicks what a person
would click. Screenshots of failures are kept under test-artifacts/.
"""
from __future__ import annotations

import atexit
import contextlib
import functools
import json
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from playwright.sync_api import expect

from studio.run import status as runs
from studio.launch.command import free_port

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = Path("/usr/bin/chromium")
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--no-first-run"]
ARTIFACTS = ROOT / "test-artifacts"
DRAWN = "#%s .st-chart:not([data-points='0'])"  # a chart of the page (studio/ui/chart.py) with points drawn
# gradio's status tracker over a component that an event updates: shown (no .hide) from the moment the event is sent
# (a click marks its outputs at once) until it is answered; one that shows an error is over. Events with
# show_progress="hidden" (the watches, the memory estimate) have none.
BUSY = ("[...document.querySelectorAll('[data-testid=status-tracker]:not(.hide)')]"
        ".some(w => !w.querySelector('.error, .validation-error'))")

pytestmark = [pytest.mark.browser, pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium (apt-get install -y chromium)")]


def wait_served(url: str, proc: subprocess.Popen, timeout: float = 180) -> float:
    t0 = time.time()
    while time.time() - t0 < timeout:
        assert proc.poll() is None, "studio webui exited early"
        with contextlib.suppress(OSError):
            urllib.request.urlopen(url, timeout=2)
            return time.time() - t0
        time.sleep(0.2)
    raise AssertionError(f"{url} not served after {timeout}s")


def start_server(workdir: Path, port: int) -> subprocess.Popen:
    log = open(workdir / "webui.log", "ab")
    return subprocess.Popen([sys.executable, "-m", "studio", "webui", "--port", str(port)], cwd=workdir, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)


def serve_workdir(workdir: Path) -> dict:
    """`studio webui` on a free port in a new working folder `workdir` holding a copy of data/: {url, workdir, proc}."""
    workdir.mkdir()
    shutil.copytree(ROOT / "data", workdir / "data")
    port = free_port()
    proc = start_server(workdir, port)
    url = f"http://127.0.0.1:{port}/"
    wait_served(url, proc)
    return {"url": url, "workdir": workdir, "proc": proc}


@pytest.fixture
def server(tmp_path):
    workdir = tmp_path / "work"
    info = serve_workdir(workdir)
    yield info
    info["proc"].terminate()
    info["proc"].wait(timeout=30)
    from studio.launch import process

    for r in runs.list_runs(workdir / "runs"):
        process.stop(r.path, grace=5)


_chromium: dict = {}  # one chromium per test process; each page gets a context of its own (cookies, storage, cache)


def _browser():
    if not (_chromium.get("browser") and _chromium["browser"].is_connected()):
        from playwright.sync_api import sync_playwright

        if "playwright" not in _chromium:
            _chromium["playwright"] = sync_playwright().start()
            atexit.register(_close_browser)
        _chromium["browser"] = _chromium["playwright"].chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
    return _chromium["browser"]


def _close_browser():
    with contextlib.suppress(Exception):
        _chromium["browser"].close()
    with contextlib.suppress(Exception):
        _chromium["playwright"].stop()


@contextlib.contextmanager
def open_page(timeout_ms: int = 60_000):
    """A page in a fresh context of Debian's headless chromium, closed on leaving (the browser is shared: starting
    one costs ~1.2 CPU-s more than a context)."""
    context = _browser().new_context(viewport={"width": 1400, "height": 1000})
    pg = context.new_page()
    pg.set_default_timeout(timeout_ms)
    # wait_for_function checks its condition at every animation frame unless told otherwise (60 times a second,
    # chromium's renderer busy for as long as a test waits); every 100 ms is enough
    pg.wait_for_function = functools.partial(pg.wait_for_function, polling=100)
    try:
        yield pg
    finally:
        context.close()


@pytest.fixture
def page(request):
    with open_page() as pg:
        failed_before = request.session.testsfailed
        try:
            yield pg
        finally:
            if request.session.testsfailed > failed_before:  # the call phase failed: keep what the page showed
                ARTIFACTS.mkdir(exist_ok=True)
                pg.screenshot(path=str(ARTIFACTS / f"{request.node.name}.png"), full_page=True)


def settled(pg, timeout_ms: int = 60_000) -> None:
    """Wait until no event that shows its progress is waiting or running (call it right after the action that sends
    one: the outputs show as pending from the click on)."""
    pg.wait_for_function(f"() => !({BUSY})", timeout=timeout_ms)


def open_app(pg, url: str) -> None:
    """Load the page and wait for the answers to its load events (they set the dataset lists, the device list and the
    runs list: an action before them races them). They are sent together and the memory estimate is one of them: once
    it is drawn, every one has been sent, and the outputs of those not answered yet show as pending."""
    pg.goto(url)
    pg.wait_for_selector("#start")
    pg.wait_for_function("() => !!document.querySelector('#memory-estimate')?.innerText.trim()", timeout=60_000)
    settled(pg)


def accordion(pg, elem_id: str):
    """The header of the accordion `elem_id` (what opens and closes it; a click on the block itself lands on whatever
    is at its centre)."""
    return pg.locator(f"#{elem_id} > button.label-wrap")


def pick(pg, elem_id: str, option: str) -> None:
    """Choose one option of a single-choice dropdown."""
    pg.locator(f"#{elem_id} input").first.click()
    pg.locator(f"#{elem_id} [role=option][aria-label='{option}']").click()  # this dropdown's own list, not one closing


def set_number(pg, elem_id: str, value) -> None:
    box = pg.locator(f"#{elem_id} input").first
    box.fill(str(value))
    box.press("Tab")


def choose(pg, elem_id: str, option: str) -> None:
    """Pick `option` in a gradio dropdown (multi-select: clears the others first)."""
    clear = pg.locator(f"#{elem_id} .remove-all")
    if clear.count():
        clear.click()
    pg.locator(f"#{elem_id} input").first.click()
    pg.locator(f"#{elem_id} [role=option][aria-label='{option}']").click()  # this dropdown's own list, not one closing
    pg.keyboard.press("Escape")
    pg.wait_for_function(f"() => document.querySelector('#{elem_id} .token')?.innerText.includes('{option}')")


def progress(pg) -> dict:
    el = pg.locator("#progress [data-status]")
    return {k: el.get_attribute(f"data-{k}") for k in ("status", "step", "total", "points")}


def wait_status(pg, statuses: tuple, timeout: float) -> None:
    cond = " || ".join(f"e.dataset.status === '{s}'" for s in statuses)
    pg.wait_for_function(f"() => {{ const e = document.querySelector('#progress [data-status]'); return e && ({cond}) }}", timeout=timeout * 1000)


def followed_run(workdir: Path, after: set) -> Path:
    deadline = time.time() + 180  # the first Start waits for the data check (a short child process)
    while time.time() < deadline:
        new = [p for p in (workdir / "runs").glob("*") if p.is_dir() and p.name not in after]
        if new:
            return new[0]
        time.sleep(0.2)
    raise AssertionError("no run folder appeared")


def set_text(pg, elem_id: str, value: str) -> None:
    box = pg.locator(f"#{elem_id} input").first
    box.fill(value)
    box.press("Enter")
    pg.keyboard.press("Escape")


def start_tiny_run(pg, tiny_model: Path, dataset: str) -> None:
    """Train tab: 3 steps of batch 2 on `dataset` with the tiny model, then Start."""
    set_text(pg, "f-model-name_or_path", str(tiny_model))  # the free-text model box: any local folder
    choose(pg, "f-data-dataset", dataset)
    set_number(pg, "f-train-max_steps", 3)
    set_number(pg, "f-train-per_device_train_batch_size", 2)
    set_number(pg, "f-train-gradient_accumulation_steps", 1)
    pg.click("#start")


def lowest_priority(run: Path) -> None:
    """Renice a running job's processes to 19: a job that a test only needs running takes only the CPU left over."""
    import psutil

    from studio.launch import process

    for pid in process.job_pids(runs.job_info(run)):
        with contextlib.suppress(psutil.Error):
            psutil.Process(pid).nice(19)


def test_train_watch_list_and_abort(server, page, tiny_model):
    pg, workdir = page, server["workdir"]
    open_app(pg, server["url"])
    start_tiny_run(pg, tiny_model, "identity")
    run = followed_run(workdir, set())
    wait_status(pg, ("running", "done"), 60)
    # the loss plot gets points, the progress bar reaches the end
    pg.wait_for_function("() => +(document.querySelector('#progress [data-points]')?.dataset.points || 0) > 0", timeout=600_000)
    pg.wait_for_selector(DRAWN % "loss-plot", timeout=30_000)
    wait_status(pg, ("done", "error", "crashed"), 600)
    state = progress(pg)
    assert state["status"] == "done", pg.inner_text("#final")
    assert state["step"] == state["total"] == "3"
    assert "3/3" in pg.inner_text("#progress")
    assert int(state["points"]) >= 3
    pg.wait_for_selector("#loss-plot .st-chart[data-points='3']", timeout=30_000)  # the last point is drawn at the end
    x_ticks = [float(t) for t in pg.locator("#loss-plot .st-x text").all_text_contents()[:-1]]  # the last one is its title
    assert x_ticks == sorted(x_ticks) and x_ticks[0] >= 1 and x_ticks[-1] <= 3, x_ticks
    expect(pg.locator("#final")).to_contain_text("train loss", use_inner_text=True, timeout=30_000)  # a component of its own
    assert "done" in pg.inner_text("#final") and "train loss" in pg.inner_text("#final")
    assert pg.input_value("#f-model-name_or_path input") == str(tiny_model)
    events = [json.loads(x) for x in (run / "events.jsonl").read_text().splitlines()]
    assert [e["step"] for e in events if e["event"] == "log"][-1] == 3
    # the run is in the runs list (gradio's table draws its rows as div[role=row] of div[role=gridcell]; its <tr> is a
    # hidden copy of the first row, for the column widths); the list had it already, running, since Start
    row_js = ("() => [...document.querySelectorAll('#runs-table div[role=row]')]"
              ".map(r => [...r.querySelectorAll('[role=gridcell]')].map(c => c.textContent.trim()))")
    pg.wait_for_function(f"() => ({row_js})().some(r => r[0] === '{run.name}' && !['running', 'queued'].includes(r[1]))", timeout=30_000)
    rows = pg.evaluate(row_js)
    row = next(r for r in rows if r and r[0] == run.name)
    assert row[1] == "done" and row[6] == "3/3" and float(row[7]) > 0, row

    # a second run, aborted while it loads or trains: nothing of it is left
    set_number(pg, "f-train-max_steps", 100000)
    pg.click("#start")
    second = followed_run(workdir, {run.name})
    wait_status(pg, ("running",), 60)
    pg.wait_for_function(f"() => document.querySelector('#message')?.innerText.includes('{second.name}')", timeout=30_000)
    has_points = "() => +(document.querySelector('#progress [data-points]')?.dataset.points || 0) > 0"
    pg.wait_for_function(has_points, timeout=300_000)
    lowest_priority(second)  # from its first point on, it only has to be running while the page reloads and the server restarts
    # reload the page, then restart the server: the run goes on, and the page finds it and plots it again
    for restart in (False, True):
        if restart:
            server["proc"].terminate()
            server["proc"].wait(timeout=30)
            server["proc"] = start_server(workdir, int(server["url"].rsplit(":", 1)[1].strip("/")))
            wait_served(server["url"], server["proc"])
        for attempt in range(3):  # a reload that races the page's own requests is aborted by chromium: load it again
            try:
                pg.goto(server["url"])
                break
            except Exception:
                if attempt == 2:
                    raise
                time.sleep(2)
        pg.wait_for_selector("#start")
        wait_status(pg, ("running",), 180)  # the page's load event finds the running job
        assert second.name in pg.inner_text("#progress"), f"restart={restart}"
        pg.wait_for_function(has_points, timeout=120_000)
        pg.wait_for_selector(DRAWN % "loss-plot", timeout=30_000)
    pg.click("#abort")
    wait_status(pg, ("aborted",), 120)
    job = json.loads((second / "job.json").read_text())
    deadline = time.time() + 40
    while runs.group_alive(job["pgid"]) and time.time() < deadline:
        time.sleep(0.5)
    assert not runs.group_alive(job["pgid"]), "processes of the aborted run are still alive"
    assert runs.status(second) == "aborted"
    expect(pg.locator("#final")).to_contain_text("aborted", use_inner_text=True, timeout=30_000)


def test_preview_and_register_a_dataset(server, page, tmp_path):
    pg, workdir = page, server["workdir"]
    open_app(pg, server["url"])
    inflight: set = set()  # the page's queue requests not finished yet (a stream of answers ends when none is left)
    pg.on("request", lambda r: inflight.add(r) if "/queue/" in r.url else None)
    pg.on("requestfinished", lambda r: inflight.discard(r))
    pg.on("requestfailed", lambda r: inflight.discard(r))
    # the preview of the page's datasets (the first 32 of identity, then of alpaca_demo): counts, and the answers highlighted as the
    # tokens that carry the loss
    accordion(pg, "data-preview").click()
    pg.click("#preview-data")
    pg.wait_for_function("() => document.querySelector('#preview-counts')?.innerText.includes('trained tokens')", timeout=180_000)
    counts = pg.inner_text("#preview-counts")
    assert "64 examples" in counts and "0 dropped" in counts
    pg.wait_for_selector("#preview-body .st-example .t", timeout=30_000)  # the examples: a component of their own
    trained = pg.locator("#preview-body .st-example .t").first.inner_text()
    assert "Pico" in trained
    # upload a file, map its columns, preview it, save it into dataset_info.json
    upload = tmp_path / "faq.jsonl"
    upload.write_text("\n".join(json.dumps({"question": f"Question {i}?", "answer": f"Answer {i}."}) for i in range(4)) + "\n")
    accordion(pg, "add-dataset").click()
    pg.locator("#upload input[type=file]").set_input_files(str(upload))
    pg.wait_for_function("() => document.querySelector('#new-name textarea, #new-name input')?.value === 'faq'", timeout=60_000)
    pg.click("#new-preview")
    pg.wait_for_function("() => document.querySelector('#add-dataset')?.innerText.includes('4 examples')", timeout=180_000)
    pg.wait_for_selector("#add-dataset .st-example .t", timeout=30_000)  # the examples are drawn beside the counts
    assert "Answer 0." in pg.locator("#add-dataset .st-example .t").first.inner_text()
    pg.click("#new-save")
    pg.wait_for_function("() => document.querySelector('#add-dataset')?.innerText.includes('saved in')", timeout=30_000)
    info = json.loads((workdir / "data" / "dataset_info.json").read_text())
    assert info["faq"] == {"file_name": "faq.jsonl", "columns": {"prompt": "question", "response": "answer"}}
    assert (workdir / "data" / "faq.jsonl").read_text() == upload.read_text()
    assert list((workdir / ".studio" / "uploads").rglob("faq.jsonl"))  # gradio's own copy stays in the working folder too
    choose(pg, "f-data-dataset", "faq")  # the new entry is offered at once
    # at rest, every tab visited, the page sends the server nothing: a tab reads a job only while it follows one that runs
    for tab in ("Evaluate & Predict", "Chat", "Export", "Data", "Train"):
        pg.get_by_role("tab", name=tab).click()
        if tab == "Chat":
            accordion(pg, "chat-api").click()  # the API panel's server status
    settled(pg)  # the events that visiting a tab starts are over: those that show progress are answered,
    pg.evaluate("() => 0")  # (a round trip: the requests the clicks sent have been seen here)
    deadline = time.time() + 60
    while inflight and time.time() < deadline:  # and every queue request, and its stream of answers, has ended
        pg.wait_for_timeout(100)
    assert not inflight, [r.url for r in inflight]
    sent = []
    pg.on("request", lambda r: sent.append(r.url) if "/queue/" in r.url else None)
    pg.wait_for_timeout(5000)
    assert sent == [], sent
