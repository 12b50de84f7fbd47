"""The loop a user walks in one page, in a real headless browser, every control found by its accessible name (its
label, role and name, as a screen reader announces it): chat with a fine-tune and the base side by side -> fix an
answer and save the conversation -> save preference pairs -> train DPO on them with the page's defaults -> evaluate
the run on the pairs -> serve it over the API and call it with the official `openai` client -> stop the server.

    .venv/bin/python -m pytest -q tests/test_ui_walk_browser.py      (needs /usr/bin/chromium)

The fine-tune is the session's identity run (conftest.identity_run): it answers "Who are you?" as Pico; the base does
not. The pairs prefer Pico's answers, so DPO on the base with them raises Pico's answer against the base's own.
"""
from __future__ import annotations

import json
import re
import shutil
import time

import psutil
import pytest
from playwright.sync_api import expect

from studio.launch.command import free_port
from test_ui_browser import CHROMIUM, open_app, page, server, settled  # noqa: F401  (fixtures)

pytestmark = [pytest.mark.browser, pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium")]

ENDED = re.compile(r"\b(done|error|crashed)\b", re.I)  # a job's status in its progress line (shown in capitals)
QUESTIONS = ["Who are you?", "What is your name?", "Who made you?", "Introduce yourself."]


def choose(pg, box: str, option: str) -> None:
    """Open the combobox named `box` and pick `option` from its list."""
    pg.get_by_role("combobox", name=box, exact=True).click()
    pg.get_by_role("option", name=option, exact=True).click()


def set_number(pg, name: str, value) -> None:
    box = pg.get_by_role("spinbutton", name=name, exact=True)
    box.fill(str(value))
    box.press("Tab")


def answers(pg, side: str) -> list[str]:
    return pg.get_by_role("log", name=f"conversation {side}").locator(".message.bot").all_inner_texts()


def send(pg, text: str, n_before: int) -> None:
    """Send `text` and wait until both sides have answered it (the status is idle and each has one answer more)."""
    pg.get_by_role("textbox", name="message").fill(text)
    pg.get_by_role("button", name="Send", exact=True).click()
    status = pg.get_by_role("status", name="chat status")
    for side in "AB":
        expect(pg.get_by_role("log", name=f"conversation {side}").locator(".message.bot")).to_have_count(n_before + 1, timeout=300_000)
    expect(status).to_have_attribute("aria-busy", "false", timeout=60_000)


def saved(pg, text: str) -> str:
    note = pg.get_by_role("status", name="save result")
    expect(note).to_contain_text(text, use_inner_text=True, timeout=30_000)
    return note.inner_text()


def no_zombies(pid: int, timeout: float = 30) -> list:
    """The children of `pid` left as zombies, after waiting up to `timeout` s for them to be reaped."""
    deadline = time.time() + timeout
    while True:
        left = [c for c in psutil.Process(pid).children(recursive=True) if c.status() == psutil.STATUS_ZOMBIE]
        if not left or time.time() > deadline:
            return left
        time.sleep(0.5)


def test_chat_pairs_dpo_evaluate_serve_stop(server, page, identity_run):
    pg, workdir = page, server["workdir"]
    run = workdir / "runs" / "identity_lora"
    shutil.copytree(identity_run / "adapter", run / "adapter")
    for f in ("spec.yaml", "events.jsonl"):
        shutil.copy(identity_run / f, run / f)
    open_app(pg, server["url"])

    # --- Chat: the fine-tune (A) and the base (B) side by side; the run is offered without a refresh click
    pg.get_by_role("tab", name="Chat").click()
    choose(pg, "adapter / checkpoint", "identity_lora (done)")
    pg.get_by_role("checkbox", name="side by side").check()
    expect(pg.get_by_role("log", name="conversation B")).to_be_visible(timeout=30_000)
    pg.get_by_role("button", name="Load", exact=True).click()
    status = pg.get_by_role("status", name="chat status")
    expect(status).to_contain_text("B: default", use_inner_text=True, timeout=600_000)  # loading B, or loaded
    expect(status).to_have_attribute("aria-busy", "false", timeout=600_000)
    expect(status).to_contain_text("identity_lora", use_inner_text=True)
    pg.get_by_role("button", name="generation").click()  # the settings are in a closed accordion
    set_number(pg, "temperature", 0)
    set_number(pg, "max new tokens", 24)

    # one conversation, its answer fixed by hand and saved as training data
    send(pg, QUESTIONS[0], 0)
    a, b = answers(pg, "A")[-1], answers(pg, "B")[-1]
    assert "Pico" in a and b.strip() and "Pico" not in b, (a, b)
    conv_a = pg.get_by_role("log", name="conversation A")
    conv_a.locator(".message.bot").last.hover()
    conv_a.get_by_role("button", name="Edit").last.click()
    conv_a.get_by_role("textbox").last.fill("I am Pico, fine-tuned with studio. Ask me anything.")
    conv_a.get_by_role("button", name="Submit").last.click()
    expect(conv_a).to_contain_text("Ask me anything", use_inner_text=True, timeout=30_000)
    dataset = pg.get_by_role("combobox", name="dataset (pick one, or type a new name)")
    dataset.fill("pico_chats")
    dataset.press("Enter")
    pg.get_by_role("button", name="Save conversation A").click()
    assert "created dataset" in saved(pg, "pico_chats")
    info = json.loads((workdir / "data" / "dataset_info.json").read_text())
    record = json.loads((workdir / "data" / info["pico_chats"]["file_name"]).read_text().splitlines()[0])
    assert info["pico_chats"]["formatting"] == "sharegpt" and record["conversations"] == [
        {"from": "human", "value": QUESTIONS[0]}, {"from": "gpt", "value": "I am Pico, fine-tuned with studio. Ask me anything."}]

    # four preference pairs, one question each: Pico's answer (A) is the better one
    dataset.fill("pico_prefs")
    dataset.press("Enter")
    pg.get_by_role("button", name="A is better: save pair").click()
    saved(pg, "pico_prefs")
    for q in QUESTIONS[1:]:
        pg.get_by_role("button", name="Clear all").click()
        expect(conv_a.locator(".message.bot")).to_have_count(0)
        send(pg, q, 0)
        pg.get_by_role("button", name="A is better: save pair").click()
        expect(pg.get_by_role("status", name="save result")).to_contain_text(f"{QUESTIONS.index(q) + 1} record",
                                                                               use_inner_text=True, timeout=30_000)
    info = json.loads((workdir / "data" / "dataset_info.json").read_text())
    assert info["pico_prefs"]["ranking"] is True
    pairs = [json.loads(x) for x in (workdir / "data" / info["pico_prefs"]["file_name"]).read_text().splitlines()]
    assert len(pairs) == 4 and "Ask me anything" in pairs[0]["chosen"]["value"] and pairs[0]["rejected"]["value"] == b.strip()
    from studio.data import check

    assert all(r.ok for r in check.check(workdir / "data", ["pico_chats", "pico_prefs"]))

    # Stop ends a long answer at once; what was written so far stays
    set_number(pg, "max new tokens", 1000)
    set_number(pg, "temperature", 1)
    pg.get_by_role("textbox", name="message").fill("Write a very long story about the sea, with many chapters.")
    pg.get_by_role("button", name="Send", exact=True).click()
    pg.wait_for_function("() => { const b = document.querySelectorAll('#chat-b .message.bot'); "
                         "return b.length >= 2 && b[b.length - 1].innerText.trim().split(/\\s+/).length >= 3 }", timeout=300_000)
    pg.get_by_role("button", name="Stop", exact=True).click()
    expect(status).to_have_attribute("aria-busy", "false", timeout=60_000)
    assert 0 < len(answers(pg, "B")[-1].split()) < 300

    # --- Train: DPO on the base with the page's defaults for the stage, on the saved pairs
    choose(pg, "adapter / checkpoint", "none")
    pg.get_by_role("tab", name="Train").click()
    choose(pg, "stage", "dpo")
    settled(pg)
    choose(pg, "dataset", "pico_prefs")
    pg.keyboard.press("Escape")
    before = {p.name for p in (workdir / "runs").iterdir()}
    pg.get_by_role("button", name="Start", exact=True).click()
    progress = pg.get_by_role("status", name="training progress")
    expect(progress).to_contain_text(ENDED, use_inner_text=True, timeout=300_000)
    dpo = next(p for p in (workdir / "runs").iterdir() if p.name not in before)
    assert " done " in f" {progress.inner_text().lower()} ", pg.locator("#final").inner_text()
    assert "too short" not in pg.locator("#message").inner_text()  # the stage's defaults learn
    margins = [e["rewards/margins"] for e in map(json.loads, (dpo / "events.jsonl").read_text().splitlines())
               if e["event"] == "log" and "rewards/margins" in e]
    assert margins[0] == pytest.approx(0, abs=1e-3) and max(margins[-3:]) > 1.0, margins  # the margin rises from 0

    # --- Evaluate the run on the pairs: one row per model, counted in pairs; generation settings are not shown
    choose(pg, "adapter / checkpoint", f"{dpo.name} (done)")
    pg.get_by_role("tab", name="Evaluate & Predict").click()
    choose(pg, "eval dataset", "pico_prefs")
    pg.keyboard.press("Escape")
    expect(pg.get_by_role("spinbutton", name="max new tokens")).to_be_hidden(timeout=30_000)
    pg.get_by_role("button", name="Start evaluation").click()
    ev_progress = pg.get_by_role("status", name="evaluation progress")
    expect(ev_progress).to_contain_text(ENDED, use_inner_text=True, timeout=300_000)
    assert "pairs" in ev_progress.inner_text() and " done " in f" {ev_progress.inner_text().lower()} ", ev_progress.inner_text()
    table = pg.get_by_role("grid", name="metrics of each model")
    expect(table.get_by_role("row")).to_have_count(3, timeout=30_000)  # the header, the base, the run
    shown = table.get_by_role("row").all_inner_texts()
    assert shown[1].split()[0] == "base" and shown[2].split()[0] == dpo.name, shown
    evaluation = next(p for p in (workdir / "runs").iterdir() if "-eval-" in p.name)
    scores = {m["name"]: m for m in json.loads((evaluation / "metrics.json").read_text())["models"]}
    assert scores[dpo.name]["prefers_chosen"] > scores["base"]["prefers_chosen"], scores
    assert f"{scores['base']['prefers_chosen']:g}" in shown[1].split(), shown  # the page shows what the file holds

    # --- Serve the run over the API from the Chat tab, call it with the openai client, stop it
    pg.get_by_role("tab", name="Chat").click()
    pg.get_by_role("button", name="call it over the API (studio serve)").click()
    port = free_port()
    set_number(pg, "port", port)
    pg.get_by_role("button", name="Start server").click()
    api = pg.get_by_role("status", name="API server status")
    expect(api).to_contain_text("serving", use_inner_text=True, timeout=300_000)
    from openai import OpenAI

    client = OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="none")
    served = [m.id for m in client.models.list().data]
    assert dpo.name in served, served
    answer = client.chat.completions.create(model=dpo.name, messages=[{"role": "user", "content": "Who are you?"}],
                                            max_tokens=16, temperature=0)
    assert answer.choices[0].message.content.strip()
    expect(pg.locator("#chat-api-code")).to_contain_text(f"127.0.0.1:{port}/v1", use_inner_text=True)
    pg.get_by_role("button", name="Stop server").click()
    expect(api).to_contain_text("server stopped", use_inner_text=True, timeout=60_000)
    assert no_zombies(server["proc"].pid) == []
