"""The Export tab's merge panel in a real headless browser, every control found by its accessible name: one adapter is
refused with the reason, two LoRA runs of the tiny model merge with TIES into a new run that the top bar then offers.

    .venv/bin/python -m pytest -q tests/test_ui_merge_browser.py      (needs /usr/bin/chromium)
"""
from __future__ import annotations

import json
import re
import time

import pytest
from playwright.sync_api import expect

from studio import spec as specmod
from test_merge import lora
from test_ui_browser import CHROMIUM, open_app, page, server  # noqa: F401  (fixtures)

pytestmark = [pytest.mark.browser, pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium")]


def lora_run(workdir, name: str, tiny_model, seed: int) -> None:
    """A finished LoRA training run of the tiny model, as a training job leaves it."""
    run = workdir / "runs" / name
    lora(tiny_model, run / "adapter", seed)
    specmod.dump(specmod.load(None, [f"output_dir=runs/{name}", f"model.name_or_path={tiny_model}"]), run / "spec.yaml")
    now = time.time()
    (run / "events.jsonl").write_text(json.dumps({"t": now - 5, "event": "start", "task": "train", "total_steps": 4}) + "\n"
                                      + json.dumps({"t": now, "event": "done", "step": 4, "path": f"runs/{name}/adapter"}) + "\n")


def add(pg, box: str, option: str) -> None:
    """Add `option` to the multi-select combobox named `box`."""
    pg.get_by_role("combobox", name=box).click()
    pg.get_by_role("option", name=option, exact=True).click()
    pg.keyboard.press("Escape")


def test_two_lora_runs_merge_with_ties_into_a_run_the_top_bar_offers(server, page, tiny_model):
    pg, workdir = page, server["workdir"]
    lora_run(workdir, "fact_a", tiny_model, 1)
    lora_run(workdir, "fact_b", tiny_model, 2)
    open_app(pg, server["url"])
    pg.get_by_role("tab", name="Export").click()
    pg.get_by_role("button", name="Merge adapters: two or more LoRA runs of one base into one adapter").click()
    add(pg, "adapters to merge", "fact_a (train, done)")
    pg.get_by_role("button", name="Merge", exact=True).click()
    note = pg.get_by_role("status", name="merge message")
    expect(note).to_contain_text("two or more adapters", use_inner_text=True, timeout=30_000)

    add(pg, "adapters to merge", "fact_b (train, done)")
    pg.get_by_role("combobox", name="method").click()
    pg.get_by_role("option", name="ties", exact=True).click()
    pg.get_by_role("button", name="Merge", exact=True).click()
    progress = pg.get_by_role("status", name="merge progress")
    expect(progress).to_contain_text(re.compile(r"\b(done|error|crashed)\b", re.I), use_inner_text=True, timeout=300_000)
    assert "done" in progress.inner_text().lower(), progress.inner_text()
    expect(pg.locator("#merge-result")).to_contain_text("Merged 2 adapters (ties", use_inner_text=True, timeout=30_000)
    merged = next(p for p in (workdir / "runs").iterdir() if "-merge-" in p.name)
    assert json.loads((merged / "adapter" / "adapter_config.json").read_text())["peft_type"] == "LORA"
    assert specmod.load(merged / "spec.yaml").model.name_or_path == str(tiny_model)  # the base of the adapters
    from studio.model.source import resolve_folder

    r = resolve_folder(merged, str(tiny_model))  # what chat, evaluate, serve and export resolve
    assert r.adapter == merged / "adapter" and r.peft_type == "LORA"
    pg.get_by_role("combobox", name="adapter / checkpoint").click()  # offered without a refresh click
    expect(pg.get_by_role("option", name=f"{merged.name} (done)", exact=True)).to_be_visible(timeout=15_000)
