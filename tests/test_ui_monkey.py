"""The page under a seeded random walk: tabs, buttons, checkboxes, dropdown options and garbage text in every field,
in a working folder of its own; then the server log holds no traceback and the page still serves. Also: a broken
dataset_info.json is named, with its line, above the dataset list, and the entries that parsed are still offered.

    .venv/bin/python -m pytest -q tests/test_ui_monkey.py        (needs /usr/bin/chromium)
"""
from __future__ import annotations

import random
import shutil
import time
import urllib.request
from pathlib import Path

import pytest
from playwright.sync_api import TimeoutError as PlaywrightTimeout

from test_ui_browser import CHROMIUM, ROOT, open_app, open_page, start_server, wait_served
from studio.launch.command import free_port

pytestmark = [pytest.mark.browser, pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium (apt-get install -y chromium)")]

GARBAGE = ["", "-1", "-999999999", "1e308", "99999999999999999999", "NaN", "nan", "inf", "0", "0.5", "../../etc", "/etc/passwd",
           "../outside.yaml", "<b>bold</b><script>alert(1)</script>", "**md** `x` [a](javascript:alert(1))", "x" * 5000, "💥", "a,b,,c",
           "{'a': 1}", "None", "true"]
SEEDS = [1, 2, 3]  # each found nothing new at the time of writing; a seed that finds a bug is kept here with its fix
# (the seeds share one server, one after another: a seed's walk meets the server as the seeds before it left it)
ACTIONS = 25
# the Train tab's Preview, Save and Start are answered: #message no longer reads the note Start writes before it checks,
# and no output of theirs shows as pending (Start's check is a second event, sent once the note is drawn)
ANSWERED = ("() => !document.querySelector('#message')?.innerText.includes('checking the data and starting') && "
            "!['message', 'command', 'runs-table'].some(id => { const w = document.querySelector(`#${id} [data-testid=status-tracker]`); "
            "return w && !w.classList.contains('hide') && !w.querySelector('.error, .validation-error') })")


def _workdir(base: Path) -> Path:
    """A working folder of its own, with a copy of the demo data."""
    shutil.copytree(ROOT / "data", base / "work" / "data")
    return base / "work"


@pytest.fixture
def served(tmp_path):
    return _workdir(tmp_path)


def _serve(workdir: Path):
    port = free_port()
    proc = start_server(workdir, port)
    url = f"http://127.0.0.1:{port}/"
    wait_served(url, proc)
    return proc, url


def _stop_runs(workdir: Path) -> None:
    from studio.launch import process
    from studio.run import status as runs

    for r in runs.list_runs(workdir / "runs"):
        process.stop(r.path, grace=5)


def _stop(proc, workdir: Path) -> str:
    proc.terminate()
    proc.wait(timeout=30)
    _stop_runs(workdir)
    return (workdir / "webui.log").read_text(errors="replace")


def _tracebacks(log: str) -> list[str]:
    lines = log.splitlines()
    return ["\n".join(lines[i:i + 30]) for i, line in enumerate(lines) if "Traceback" in line]


def test_a_broken_registry_is_named_above_the_dataset_list(served):
    info = served / "data" / "dataset_info.json"
    info.write_text(info.read_text().replace('"identity.json"\n', '"identity.json",\n', 1))
    proc, url = _serve(served)
    try:
        with open_page() as pg:
            open_app(pg, url)  # the page's load writes the note and the dataset list again: answered before they are read
            pg.wait_for_function("() => document.querySelector('#registry-note')?.innerText.includes('line 4')")
            note = pg.inner_text("#registry-note")
            assert "data/dataset_info.json" in note and "line 4, column 3: invalid JSON" in note and "identity" in note
            # the note is above the dataset list
            assert pg.locator("#registry-note").bounding_box()["y"] < pg.locator("#f-data-dataset").bounding_box()["y"]
            pg.locator("#f-data-dataset input").first.click()
            pg.wait_for_selector("#f-data-dataset [role=listbox]")
            options = pg.eval_on_selector_all("#f-data-dataset [role=option]", "els => els.map(e => e.getAttribute('aria-label'))")
            pg.keyboard.press("Escape")
            assert "alpaca_demo" in options and "identity_eval" in options and "identity" not in options
            # fixed and re-read: the note goes, identity is offered again
            info.write_text(info.read_text().replace('"identity.json",\n', '"identity.json"\n', 1))
            pg.click("#refresh-data")
            pg.wait_for_function("() => !document.querySelector('#registry-note')?.innerText.includes('line 4')")
            pg.locator("#f-data-dataset input").first.click()
            pg.wait_for_selector("#f-data-dataset [role=option][aria-label='identity']")
    finally:
        log = _stop(proc, served)
    assert not _tracebacks(log), _tracebacks(log)[0]


def _walk(pg, rng: random.Random, n: int) -> list[str]:
    done = []
    for _ in range(n):
        kind = rng.choice(["tab", "button", "check", "dropdown", "text", "text", "text", "accordion"])
        try:
            if kind == "tab":
                tabs = pg.locator("button[role=tab]")
                i = rng.randrange(tabs.count())
                done.append(f"tab {tabs.nth(i).inner_text()}")
                tabs.nth(i).click(timeout=5000)
            elif kind == "accordion":
                acc = pg.locator("button.label-wrap:visible")
                if acc.count():
                    i = rng.randrange(acc.count())
                    done.append(f"accordion {acc.nth(i).inner_text()[:30]}")
                    acc.nth(i).click(timeout=5000)
            elif kind == "button":
                buttons = pg.locator("button.lg:visible, button.sm:visible, button.md:visible")
                ids = [x for x in buttons.evaluate_all("els => els.map(e => e.id)") if x and x not in ("start", "export-start")]
                if ids:
                    pick = rng.choice(ids)
                    done.append(f"click #{pick}")
                    pg.click(f"#{pick}", timeout=5000)
            elif kind == "check":
                boxes = pg.locator("input[type=checkbox]:visible")
                if boxes.count():
                    i = rng.randrange(boxes.count())
                    done.append(f"check {i}")
                    boxes.nth(i).click(timeout=5000)
            elif kind == "dropdown":
                drops = pg.locator("input[role=combobox]:visible:not([disabled])")
                if drops.count():
                    i = rng.randrange(drops.count())
                    drops.nth(i).click(timeout=5000)
                    own = drops.nth(i).get_attribute("aria-controls")  # this dropdown's list, not one still closing
                    opts = pg.locator(f"[id='{own}'] [role=option]:visible")
                    if opts.count():
                        j = rng.randrange(opts.count())
                        done.append(f"dropdown {i} option {opts.nth(j).get_attribute('aria-label')}")
                        opts.nth(j).click(timeout=5000)
                    pg.keyboard.press("Escape")
            else:
                boxes = pg.locator("input[type=text]:visible, input[type=number]:visible, textarea:visible:not([disabled])")
                if boxes.count():
                    i = rng.randrange(boxes.count())
                    value = rng.choice(GARBAGE)
                    box = boxes.nth(i)
                    if box.get_attribute("type") == "number" and value not in ("", "-1", "0", "0.5", "-999999999", "1e308"):
                        value = rng.choice(["-1", "1e308", "0", "99999999999"])
                    where = box.evaluate("e => e.closest('[id]')?.id")
                    done.append(f"type {value[:20]!r} into {where}")
                    box.fill(value, timeout=5000)
                    box.press(rng.choice(["Enter", "Tab"]))
                    pg.keyboard.press("Escape")
        except Exception as e:  # an element that moved or hid meanwhile: the walk goes on
            if "Timeout" not in type(e).__name__ and "not attached" not in str(e) and "not visible" not in str(e):
                raise
        time.sleep(rng.choice([0, 0.1, 0.3]))
    return done


@pytest.fixture(scope="module")
def walked(tmp_path_factory):
    """One server, in a working folder of its own, for every seed: each seed walks a page of its own."""
    workdir = _workdir(tmp_path_factory.mktemp("monkey"))
    proc, url = _serve(workdir)
    info = {"proc": proc, "url": url, "workdir": workdir}
    yield info
    _stop(proc, workdir)


@pytest.mark.parametrize("seed", SEEDS)
def test_monkey(walked, seed):
    proc, url, log_file = walked["proc"], walked["url"], walked["workdir"] / "webui.log"
    start = log_file.stat().st_size
    done: list[str] = []
    unanswered: list[str] = []
    try:
        with open_page(20_000) as pg:
            open_app(pg, url)  # the walk starts from the page as its load left it
            done = _walk(pg, random.Random(seed), ACTIONS)
            # Preview, Save and Start with whatever the walk left in the form: refused with words, never a crash
            for button in ("preview-cmd", "save-spec", "start"):
                pg.get_by_role("tab", name="Train", exact=True).click()
                pg.click(f"#{button}")
                try:  # its events finish (one that fails is named by the log's traceback below)
                    pg.wait_for_function(ANSWERED, timeout=180_000)
                except PlaywrightTimeout:
                    unanswered.append(button)
        assert proc.poll() is None, "the server died"
        urllib.request.urlopen(url, timeout=10)  # the page still serves
    finally:
        _stop_runs(walked["workdir"])  # a job that the walk's Start began ends with its seed
    with open(log_file, "rb") as f:
        f.seek(start)
        found = _tracebacks(f.read().decode(errors="replace"))
    assert not found, f"seed {seed}: walk {done}\n\n{found[0]}"
    assert not unanswered, f"seed {seed}: walk {done}: no answer to {unanswered}"
