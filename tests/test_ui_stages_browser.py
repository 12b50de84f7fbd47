"""The preference stages on the page, in a real headless browser: the stage chosen shows its own fields, the
dataset lists offer only the entries that fit it, and a DPO run draws its reward margins and accuracies."""
from __future__ import annotations

import json

import pytest
from playwright.sync_api import expect

from test_ui_browser import (CHROMIUM, DRAWN, followed_run, open_app, page, pick, progress, server, settled, start_tiny_run,  # noqa: F401
                             wait_status)

pytestmark = [pytest.mark.browser, pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium")]


def options(pg, elem_id: str) -> list[str]:
    """The options of the dropdown `elem_id`, read from its own list (another dropdown's list may still be closing)."""
    pg.locator(f"#{elem_id} input").first.click()
    pg.wait_for_selector(f"#{elem_id} [role=listbox]")
    names = pg.eval_on_selector_all(f"#{elem_id} [role=option]", "els => els.map(o => o.getAttribute('aria-label'))")
    pg.keyboard.press("Escape")
    pg.wait_for_selector(f"#{elem_id} [role=listbox]", state="detached")
    return names


def section(pg, title: str):
    """The header of the accordion titled `title` (one element: its title is unique on the page)."""
    return pg.locator("button.label-wrap", has=pg.get_by_text(title, exact=True))


def visible(pg, title: str) -> bool:
    return section(pg, title).is_visible()


def test_dpo_on_the_page_shows_its_fields_fitting_data_and_margins(server, page, tiny_model):
    pg, workdir = page, server["workdir"]
    open_app(pg, server["url"])  # the page's load sets the dataset lists too: it is answered before the stage changes them
    assert not visible(pg, "DPO / ORPO / SimPO options")
    pick(pg, "f-method-stage", "dpo")
    settled(pg)  # the stage's change is answered: its sections shown, the dataset lists narrowed
    section(pg, "DPO / ORPO / SimPO options").wait_for(state="visible", timeout=30_000)
    assert not visible(pg, "GRPO options") and not visible(pg, "KTO options")
    expect(pg.locator("#f-method-dpo-beta")).to_be_visible(timeout=30_000)
    offered = options(pg, "f-data-dataset")
    assert offered == ["identity_pairs", "identity_pairs_eval"], offered  # the SFT entries are not offered

    start_tiny_run(pg, tiny_model, "identity_pairs")
    run = followed_run(workdir, set())
    # 3 steps: started, and said to be too short to learn
    pg.wait_for_function("() => document.querySelector('#message')?.innerText.includes('too short to learn')", timeout=180_000)
    wait_status(pg, ("done", "error", "crashed"), 600)
    assert progress(pg)["status"] == "done", pg.inner_text("#final")
    pg.wait_for_selector(DRAWN % "stage-plot", timeout=30_000)
    legend = pg.locator("#stage-plot .st-legend").all_text_contents()
    assert "rewards/margins" in legend and "rewards/accuracies" in legend, legend
    spec = (run / "spec.yaml").read_text()
    assert "stage: dpo" in spec and "identity_pairs" in spec
    logs = [json.loads(x) for x in (run / "events.jsonl").read_text().splitlines() if '"log"' in x]
    assert any("rewards/margins" in e for e in logs)


def tokens(pg, elem_id: str) -> list[str]:
    return [t.strip() for t in pg.locator(f"#{elem_id} .token").all_inner_texts()]


def test_choosing_dpo_takes_its_defaults_and_drops_the_sft_datasets_saying_why(server, page):
    """Issue #32, items 1-2: the page's SFT datasets and steps do not carry over to dpo (the datasets chosen are dropped
    with a line naming them, the form takes the dpo defaults from the stage table), and sft brings the page's back."""
    from studio.spec.stages import STAGE_TABLE

    pg = page
    open_app(pg, server["url"])
    assert tokens(pg, "f-data-dataset") == ["identity", "alpaca_demo"]
    pick(pg, "f-method-stage", "dpo")
    settled(pg)
    note = pg.locator("#stage-note")
    expect(note).to_contain_text("Removed from data.dataset", timeout=30_000)
    text = note.inner_text()
    assert "identity (chat), alpaca_demo (chat)" in text and "preference pairs" in text, text
    assert tokens(pg, "f-data-dataset") == []
    defaults = STAGE_TABLE["dpo"].defaults
    for name in ("train.max_steps", "train.per_device_train_batch_size", "train.warmup_ratio"):
        box = pg.locator(f"#f-{name.replace('.', '-')} input").first
        assert float(box.input_value()) == defaults[name], name
    pick(pg, "f-method-stage", "sft")
    settled(pg)
    expect(note).to_contain_text("page's own values", timeout=30_000)
    assert pg.locator("#f-train-max_steps input").first.input_value() == "-1"
