"""The Evaluate & Predict tab in a real headless browser: compare the base model with an adapter, read the results.

    .venv/bin/python -m pytest -q tests/test_ui_evaluate_browser.py     (needs /usr/bin/chromium)
"""
from __future__ import annotations

import json

import pytest
from playwright.sync_api import expect

from studio import spec as specmod
from test_ui_browser import CHROMIUM, accordion, choose, open_app, page, pick, server, set_number, set_text, settled  # noqa: F401  (fixtures)

pytestmark = [pytest.mark.browser, pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium")]


def make_adapter_run(run, default_model_dir) -> None:
    """A run folder as training leaves it, with a random LoRA on the default model (so its answers differ)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(default_model_dir),
                           LoraConfig(r=4, lora_alpha=32, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    model.save_pretrained(run / "adapter")
    spec = specmod.load(None, [f"output_dir={run}"])
    specmod.dump(spec, run / "spec.yaml")


def wait_rows(pg, elem_id: str, n: int) -> None:
    """Wait until the table `elem_id` draws `n` rows (gradio's table: div[role=row]; the count above it is a component
    of its own, and may be drawn first)."""
    pg.wait_for_function(f"() => document.querySelectorAll('#{elem_id} div[role=row]').length === {n}", timeout=30_000)


def test_compare_and_browse_predictions(server, page, default_model_dir):
    pg, workdir = page, server["workdir"]
    make_adapter_run(workdir / "runs" / "rand_lora", default_model_dir)
    open_app(pg, server["url"])
    pg.get_by_role("tab", name="Evaluate & Predict").click()
    pg.click("#eval-refresh")
    settled(pg)  # the run and dataset lists are read again (an answer that came after a choice would land on it)
    choose(pg, "ev-data-eval_dataset", "identity_eval")
    choose(pg, "ev-eval-compare", "runs/rand_lora")
    set_number(pg, "ev-data-max_samples", 3)
    set_number(pg, "ev-eval-max_new_tokens", 8)
    set_number(pg, "ev-eval-batch_size", 2)
    pg.click("#eval-start")
    pg.wait_for_function("() => document.querySelector('#eval-message')?.innerText.includes('Started')", timeout=60_000)
    pg.wait_for_function("() => ['done', 'error', 'crashed'].includes(document.querySelector('#eval-progress [data-status]')?.dataset.status)",
                         timeout=600_000)
    bar = pg.locator("#eval-progress [data-status]")
    assert bar.get_attribute("data-status") == "done", pg.inner_text("#eval-progress")
    assert bar.get_attribute("data-done") == bar.get_attribute("data-total") == "6"  # 3 samples x 2 models
    run = next(p for p in (workdir / "runs").iterdir() if "-eval-" in p.name)
    result = json.loads((run / "metrics.json").read_text())
    assert [m["name"] for m in result["models"]] == ["base", "rand_lora"]

    # the metrics side by side, as written
    pg.wait_for_function("() => document.querySelector('#eval-metrics')?.innerText.includes('rand_lora')", timeout=30_000)
    metrics_text = pg.inner_text("#eval-metrics")
    assert "base" in metrics_text and "rouge-l" in metrics_text and str(result["models"][0]["bleu-4"]) in metrics_text
    # the predictions of the last model, sortable and filterable
    pg.wait_for_function("() => document.querySelector('#eval-count')?.innerText.includes('3 of 3')", timeout=30_000)
    wait_rows(pg, "eval-predictions", 3)
    rows = [json.loads(line) for line in (run / "predictions-rand_lora.jsonl").read_text().splitlines()]
    text = pg.inner_text("#eval-predictions")
    at = [text.index(r["query"]) for r in sorted(rows, key=lambda r: r["rouge-l"])]  # worst first
    assert at == sorted(at), text
    expect(pg.locator("#eval-extremes")).to_contain_text("Worst samples", use_inner_text=True, timeout=30_000)
    assert "Worst samples" in pg.inner_text("#eval-extremes") and worst_query(rows) in pg.inner_text("#eval-extremes")
    box = pg.locator("#eval-search input, #eval-search textarea").first
    box.fill(rows[1]["query"])
    box.press("Enter")
    pg.wait_for_function("() => document.querySelector('#eval-count')?.innerText.includes('1 of 3')", timeout=30_000)
    wait_rows(pg, "eval-predictions", 1)
    text = pg.inner_text("#eval-predictions")
    assert rows[1]["query"] in text and rows[0]["query"] not in text
    # the search box also redraws the table when it loses focus (as it does when the model list opens): that event is
    # answered first, or its answer, naming this model, could land after the choice of the other one
    box.blur()
    settled(pg)
    # the other model's predictions
    choose_single = pg.locator("#eval-model input").first
    choose_single.click()
    pg.locator("#eval-model [role=option][aria-label='base']").click()
    base_rows = [json.loads(line) for line in (run / "predictions-base.jsonl").read_text().splitlines()]
    word = max(base_rows[1]["predict"].split(), key=len)
    pg.wait_for_function(f"() => document.querySelector('#eval-predictions')?.innerText.includes({json.dumps(word)})", timeout=30_000)
    # the adapter's run folder remembers this evaluation
    hist = [json.loads(line) for line in (workdir / "runs" / "rand_lora" / "evals.jsonl").read_text().splitlines()]
    assert hist[-1]["eval_run"] == str(run.resolve())


def worst_query(rows: list[dict]) -> str:
    return min(rows, key=lambda r: r["rouge-l"])["query"]


def test_benchmarks_and_a_judge_base_against_a_run(server, page, default_model_dir):
    """Pick benchmark tasks, a run to compare and a judge (the default model) in the Evaluate tab; read the models x
    tasks table with deltas, the win rate and the judged pairs side by side."""
    pg, workdir = page, server["workdir"]
    make_adapter_run(workdir / "runs" / "rand_lora", default_model_dir)
    open_app(pg, server["url"])
    pg.get_by_role("tab", name="Evaluate & Predict").click()
    pg.click("#eval-refresh")
    settled(pg)
    choose(pg, "ev-data-eval_dataset", "identity_eval")
    choose(pg, "ev-eval-compare", "runs/rand_lora")
    set_number(pg, "ev-data-max_samples", 2)
    set_number(pg, "ev-eval-max_new_tokens", 8)
    choose(pg, "ev-eval-benchmarks", "studio_identity")
    set_text(pg, "ev-eval-benchmark_limit", "4")
    accordion(pg, "eval-judge-box").click()
    pick(pg, "ev-eval-judge", "pairwise")
    set_number(pg, "ev-eval-judge_max_new_tokens", 16)
    settled(pg)
    pg.click("#eval-start")
    pg.wait_for_function("() => document.querySelector('#eval-message')?.innerText.includes('Started')", timeout=60_000)
    pg.wait_for_function("() => ['done', 'error', 'crashed'].includes(document.querySelector('#eval-progress [data-status]')?.dataset.status)",
                         timeout=600_000)
    assert pg.locator("#eval-progress [data-status]").get_attribute("data-status") == "done", pg.inner_text("#eval-progress")
    run = next(p for p in (workdir / "runs").iterdir() if "-eval-" in p.name)
    bench = json.loads((run / "benchmarks.json").read_text())
    assert list(bench["models"]) == ["base", "rand_lora"] and bench["tasks"] == ["studio_identity"]

    # the table: one row per model, the run's delta against the base, red where it lost more than the stderr
    table = pg.locator("#eval-benchmarks table[aria-label='benchmark scores']")
    expect(table).to_be_visible(timeout=30_000)
    tuned, base = bench["models"]["rand_lora"]["studio_identity"], bench["models"]["base"]["studio_identity"]
    row = table.get_by_role("row").filter(has_text="rand_lora")
    expect(row).to_contain_text(f"{tuned['value'] * 100:.1f}", use_inner_text=True)
    expect(row).to_contain_text(f"({tuned['delta'] * 100:+.1f})", use_inner_text=True)
    expect(table.get_by_role("row").filter(has_text="(base)")).to_contain_text(f"{base['value'] * 100:.1f}", use_inner_text=True)
    assert row.locator("td").first.get_attribute("data-lost") == str(tuned["lost"]).lower()

    # the judge: win rate with its interval, and every judged pair with both orders' reasons
    judge = json.loads((run / "judge.json").read_text())
    s = judge["pairs"][0]["summary"]
    expect(pg.locator("#eval-judge")).to_contain_text(f"win rate {s['win_rate'] * 100:.0f}%", use_inner_text=True, timeout=30_000)
    assert f"{s['wins']} wins" in pg.inner_text("#eval-judge") and "rand_lora vs base" in pg.inner_text("#eval-judge")
    wait_rows(pg, "eval-judgements", 2)
    items = [json.loads(line) for line in (run / "judgements.jsonl").read_text().splitlines()]
    text = pg.inner_text("#eval-judgements")
    for item in items:
        assert item["prompt"] in text and all(o["reason"][:30] in text for o in item["orders"])
    pick(pg, "eval-judge-sort", "losses first")
    first = next((i for i in items if i["verdict"] == "b"), items[0])
    pg.wait_for_function(f"() => document.querySelector('#eval-judgements div[role=row]')?.innerText.includes({json.dumps(first['prompt'])})",
                         timeout=30_000)
