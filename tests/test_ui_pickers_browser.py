"""The page in a real headless browser: pickers that offer runs finished after the page loaded without a refresh
click, the API panel's lines that follow the port box, and a name for every control a person acts on.

    .venv/bin/python -m pytest -q tests/test_ui_pickers_browser.py      (needs /usr/bin/chromium)

No model is loaded: the finished runs are run folders written here (a spec, a `done` event, an adapter_config.json).
"""
from __future__ import annotations

import json
import time

import pytest
from playwright.sync_api import expect

from studio import spec as specmod
from test_ui_browser import CHROMIUM, accordion, open_app, page, serve_workdir, settled  # noqa: F401

pytestmark = [pytest.mark.browser, pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium")]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """One `studio webui` for the tests of this file (none of them starts a job)."""
    info = serve_workdir(tmp_path_factory.mktemp("pickers") / "work")
    yield info
    info["proc"].terminate()
    info["proc"].wait(timeout=30)


def finished_run(workdir, name: str) -> None:
    """A LoRA training run that has ended (`done`) with its adapter saved, as a training job leaves it."""
    run = workdir / "runs" / name
    (run / "adapter").mkdir(parents=True)
    specmod.dump(specmod.load(None, [f"output_dir=runs/{name}"]), run / "spec.yaml")
    (run / "adapter" / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "base_model_name_or_path": "default"}))
    now = time.time()
    (run / "events.jsonl").write_text(
        json.dumps({"t": now - 5, "event": "start", "task": "train", "total_steps": 4}) + "\n"
        + json.dumps({"t": now, "event": "done", "step": 4, "train_loss": 1.0, "path": f"runs/{name}/adapter"}) + "\n")


def offered(pg, elem_id: str, option: str) -> None:
    """Open the dropdown `elem_id` and wait until its list offers `option`; close it again and leave it (the next
    open is a new focus, as when a person comes back to it)."""
    box = pg.locator(f"#{elem_id} input").first
    box.click()
    pg.wait_for_selector(f"#{elem_id} [role=option][aria-label='{option}']", timeout=15_000)
    pg.keyboard.press("Escape")
    box.blur()


def test_runs_that_end_after_the_page_loaded_are_offered_by_every_picker_without_a_click(server, page):
    pg, workdir = page, server["workdir"]
    finished_run(workdir, "before_load")  # after the server started, before this page loaded
    open_app(pg, server["url"])
    finished_run(workdir, "after_load")  # after the page loaded: no refresh button is pressed below
    offered(pg, "f-model-adapter", "before_load (done)")
    offered(pg, "f-model-adapter", "after_load (done)")  # the top bar (what the API panel serves)
    pg.get_by_role("tab", name="Evaluate & Predict").click()
    offered(pg, "ev-eval-compare", "runs/after_load")
    pg.get_by_role("tab", name="Chat").click()
    pg.locator("#chat-side input").check()
    pg.wait_for_selector("#chat-adapter-b", state="visible")
    offered(pg, "chat-adapter-b", "after_load (done)")
    pg.get_by_role("tab", name="Export").click()
    offered(pg, "export-source", "after_load (sft/lora, done)")
    # the button that reads every list again says what it does
    expect(pg.get_by_role("button", name="↻ runs and models")).to_be_visible()


def test_the_api_lines_follow_the_port_box(server, page):
    pg = page
    open_app(pg, server["url"])
    pg.get_by_role("tab", name="Chat").click()
    accordion(pg, "chat-api").click()
    code = pg.locator("#chat-api-code")
    expect(code).to_contain_text("127.0.0.1:8000/v1", use_inner_text=True)
    box = pg.locator("#serve-port input").first
    box.fill("9123")
    box.press("Tab")
    expect(code).to_contain_text("http://127.0.0.1:9123/v1", use_inner_text=True, timeout=15_000)
    expect(code).to_contain_text("--port 9123", use_inner_text=True)
    assert "8000" not in code.inner_text()


def test_every_control_a_person_acts_on_has_a_name(server, page):
    pg = page
    open_app(pg, server["url"])
    pg.get_by_role("tab", name="Chat").click()
    expect(pg.get_by_role("log", name="conversation A")).to_be_visible()
    pg.locator("#chat-side input").check()
    expect(pg.get_by_role("log", name="conversation B")).to_be_visible(timeout=15_000)
    expect(pg.get_by_role("textbox", name="message")).to_be_visible()
    status = pg.get_by_role("status", name="chat status")
    expect(status).to_contain_text("nothing loaded", use_inner_text=True)  # the state in words, not only in data-*
    pg.get_by_role("button", name="Save conversation A").click()  # nothing to save yet: the note says why
    note = pg.get_by_role("status", name="save result")
    expect(note).to_contain_text("error", use_inner_text=True, timeout=30_000)
    accordion(pg, "chat-api").click()
    expect(pg.get_by_role("status", name="API server status")).to_contain_text("No server started", use_inner_text=True)
    pg.get_by_role("tab", name="Evaluate & Predict").click()
    expect(pg.get_by_role("grid", name="metrics of each model")).to_be_attached()
    pg.get_by_role("tab", name="Export").click()
    expect(pg.get_by_role("button", name="↻ runs", exact=True)).to_be_visible()
    pg.get_by_role("tab", name="Data").click()
    expect(pg.get_by_role("button", name="re-read the dataset list")).to_be_visible()
    settled(pg)
