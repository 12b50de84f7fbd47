"""The Chat tab in a real headless browser: the identity adapter and the base model side by side, an edited
answer saved into a new dataset that the Train tab then lists, and a preference pair.

    .venv/bin/python -m pytest -q tests/test_ui_chat_browser.py      (needs /usr/bin/chromium)
"""
from __future__ import annotations

import json
import shutil

import pytest

from test_ui_browser import CHROMIUM, accordion, open_app, page, server, set_number, settled  # noqa: F401  (fixtures)

pytestmark = [pytest.mark.browser, pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium")]


def pick(pg, elem_id: str, option: str) -> None:
    pg.locator(f"#{elem_id} input").first.click()
    pg.locator(f"#{elem_id} [role=option][aria-label='{option}']").click()


def last_answer(pg, elem_id: str) -> str:
    bots = pg.locator(f"#{elem_id} .message.bot")
    return bots.nth(bots.count() - 1).inner_text() if bots.count() else ""


def wait_idle(pg, timeout_s: float) -> None:
    pg.wait_for_function("() => document.querySelector('#chat-status [data-busy]')?.dataset.busy === '0'", timeout=timeout_s * 1000)


def wait_answered(pg, timeout_s: float) -> None:
    """The first message of a fresh chat is answered (or refused): the status is idle again and A shows an answer.
    Before the send the status is idle too, with no answer; while it runs it is busy, which a check every 100 ms can
    miss when the answer is short."""
    pg.wait_for_function("() => { const s = document.querySelector('#chat-status [data-busy]'); return s?.dataset.busy === '0' && "
                         "(s.dataset.kind === 'error' || document.querySelectorAll('#chat-a .message.bot').length > 0) }",
                         timeout=timeout_s * 1000)


def test_side_by_side_identity_vs_base_and_save(server, page, identity_run):
    pg, workdir = page, server["workdir"]
    run = workdir / "runs" / "identity_lora"
    shutil.copytree(identity_run / "adapter", run / "adapter")
    for f in ("spec.yaml", "events.jsonl"):
        shutil.copy(identity_run / f, run / f)
    open_app(pg, server["url"])
    pg.get_by_role("tab", name="Chat").click()
    pg.click("#refresh-top")
    settled(pg)  # the adapter lists are read again
    pick(pg, "f-model-adapter", "identity_lora (done)")
    pg.locator("#chat-side input").check()
    pg.wait_for_selector("#chat-b", state="visible")
    pg.click("#chat-load")
    pg.wait_for_function("() => document.querySelector('#chat-status [data-b]')?.dataset.b === '1'", timeout=600_000)
    wait_idle(pg, 60)
    status = pg.inner_text("#chat-status")
    assert "identity_lora" in status and "B" in status, status
    assert (pg.locator("#chat-status [data-kind]").get_attribute("data-kind") == "info"), status

    accordion(pg, "chat-gen").click()  # the settings are in a closed accordion
    set_number(pg, "chat-temperature", 0)
    set_number(pg, "chat-max-new-tokens", 40)
    pg.locator("#chat-msg textarea").fill("Who are you?")
    pg.click("#chat-send")
    wait_answered(pg, 600)
    a, b = last_answer(pg, "chat-a"), last_answer(pg, "chat-b")
    assert "Pico" in a, a
    assert b.strip() and "Pico" not in b, b

    # edit the adapter's answer in place, then save the conversation into a new dataset
    msg = pg.locator("#chat-a .message.bot").last
    msg.hover()
    pg.locator("#chat-a button[aria-label='Edit']").last.click()
    box = pg.locator("#chat-a textarea").last
    box.fill("I am Pico, fine-tuned with studio. Ask me anything.")
    pg.locator("#chat-a button[aria-label='Submit']").last.click()
    pg.wait_for_function("() => document.querySelector('#chat-a')?.innerText.includes('Ask me anything')", timeout=30_000)
    name_box = pg.locator("#chat-dataset input").first
    name_box.fill("pico_chats")
    name_box.press("Enter")
    pg.click("#chat-save-a")
    pg.wait_for_function("() => document.querySelector('#chat-save-msg')?.innerText.includes('pico_chats')", timeout=30_000)
    assert "created dataset" in pg.inner_text("#chat-save-msg"), pg.inner_text("#chat-save-msg")
    info = json.loads((workdir / "data" / "dataset_info.json").read_text())
    assert info["pico_chats"]["formatting"] == "sharegpt"
    record = json.loads((workdir / "data" / info["pico_chats"]["file_name"]).read_text().splitlines()[0])
    assert record["conversations"] == [{"from": "human", "value": "Who are you?"},
                                       {"from": "gpt", "value": "I am Pico, fine-tuned with studio. Ask me anything."}]

    # the better answer and the other as a preference pair
    name_box.fill("pico_prefs")
    name_box.press("Enter")
    pg.click("#chat-prefer-a")
    pg.wait_for_function("() => document.querySelector('#chat-save-msg')?.innerText.includes('pico_prefs')", timeout=30_000)
    info = json.loads((workdir / "data" / "dataset_info.json").read_text())
    assert info["pico_prefs"]["ranking"] is True
    pair = json.loads((workdir / "data" / info["pico_prefs"]["file_name"]).read_text())
    assert "Ask me anything" in pair["chosen"]["value"] and pair["rejected"]["value"] == b.strip()

    from studio.data import check

    assert all(r.ok for r in check.check(workdir / "data", ["pico_chats", "pico_prefs"]))

    # the Train tab lists the new dataset after re-reading dataset_info.json
    pg.get_by_role("tab", name="Train").click()
    pg.click("#refresh-data")
    pg.locator("#f-data-dataset input").first.click()
    pg.wait_for_selector("#f-data-dataset [role=option][aria-label='pico_chats']", timeout=30_000)

    # Stop ends a long answer at once, in both models; what was written so far stays
    pg.get_by_role("tab", name="Chat").click()
    set_number(pg, "chat-max-new-tokens", 1000)
    set_number(pg, "chat-temperature", 1)
    pg.locator("#chat-msg textarea").fill("Write a very long story about the sea, with many chapters.")
    pg.click("#chat-send")
    # B is answering the new message (its second answer has words): the status is busy until it ends
    pg.wait_for_function("() => { const b = document.querySelectorAll('#chat-b .message.bot'); "
                         "return b.length >= 2 && b[b.length - 1].innerText.trim().split(/\\s+/).length >= 3 }", timeout=300_000)
    pg.click("#chat-stop")
    wait_idle(pg, 60)
    a, b = last_answer(pg, "chat-a"), last_answer(pg, "chat-b")
    assert 0 < len(b.split()) < 300 and len(a.split()) < 300, (a, b)
