"""The Data tab in a real headless browser: self-instruct through an OpenAI-compatible endpoint (a local test
server), watch the progress, see the kept and the dropped samples, and find the result registered.

    .venv/bin/python -m pytest -q tests/test_ui_data_browser.py     (needs /usr/bin/chromium)
"""
from __future__ import annotations

import json

import pytest
from playwright.sync_api import expect

from test_generate import POOL, Teacher
from test_ui_browser import CHROMIUM, open_app, page, pick, server, set_number, set_text  # noqa: F401  (fixtures)

pytestmark = [pytest.mark.browser, pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium")]


def test_generate_watch_and_see_kept_and_dropped(server, page):
    pg, workdir = page, server["workdir"]
    teacher = Teacher(key=None)
    open_app(pg, server["url"])
    pg.get_by_role("tab", name="Data").click()
    pg.wait_for_selector("#data-start")
    set_text(pg, "f-generate-output_dataset", "from_the_page")
    set_number(pg, "f-generate-num_instructions", 5)
    set_number(pg, "f-generate-batch_size", 2)
    pg.locator("button.label-wrap", has_text="Generator: local model").click()  # the accordion's header
    pick(pg, "f-generate-generator", "endpoint")
    set_text(pg, "f-generate-base_url", teacher.url)
    set_text(pg, "f-generate-endpoint_model", "teacher")
    pg.click("#data-start")
    pg.wait_for_function("() => document.querySelector('#data-message')?.innerText.includes('Started')", timeout=60_000)
    pg.wait_for_function("() => ['done', 'error', 'crashed'].includes(document.querySelector('#data-progress [data-status]')?.dataset.status)",
                         timeout=300_000)
    bar = pg.locator("#data-progress [data-status]")
    assert bar.get_attribute("data-status") == "done", pg.inner_text("#data-progress") + pg.inner_text("#data-result")
    assert bar.get_attribute("data-kept") == bar.get_attribute("data-total") == "5"
    assert "out_of_scope" in pg.inner_text("#data-progress")
    # the tables and the result are components of their own, drawn with the last update
    expect(pg.locator("#data-kept")).to_contain_text("ANSWER(", use_inner_text=True, timeout=30_000)
    kept = pg.inner_text("#data-kept")
    assert sum(p in kept for p in POOL) == 5 and "ANSWER(" in kept
    expect(pg.locator("#data-dropped")).to_contain_text("out_of_scope", use_inner_text=True, timeout=30_000)
    dropped = pg.inner_text("#data-dropped")
    assert "out_of_scope" in dropped and "Describe the image below" in dropped and "similar" in dropped
    expect(pg.locator("#data-result")).to_contain_text("from_the_page", use_inner_text=True, timeout=30_000)
    info = json.loads((workdir / "data" / "dataset_info.json").read_text())
    assert info["from_the_page"] == {"file_name": "from_the_page.json"}
    assert len(json.loads((workdir / "data" / "from_the_page.json").read_text())) == 5
    teacher.shutdown()
