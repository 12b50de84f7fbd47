"""Evaluate & Predict: batched generation, compare, scores, history, bad input, abort; the identity adapter on the default model."""
from __future__ import annotations

import json
import math
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import ROOT
from studio.evaluate import job as evaluate
from studio.run import events as ev
from studio.launch import process
from studio.evaluate import metrics
from studio.run import status as runs
from studio import spec as specmod

NOREF = [{"instruction": "Say hello."}, {"instruction": "Name a colour.", "output": ""}, {"instruction": "Count to three."}]


def _studio(*args, timeout=600):
    return subprocess.run([sys.executable, "-m", "studio", *map(str, args)], capture_output=True, text=True, cwd=ROOT, timeout=timeout)


@pytest.fixture(scope="module")
def tiny_run(tiny_model, tmp_path_factory) -> Path:
    """A run folder laid out as training leaves it, holding a LoRA adapter (random, so it changes the answers) on tiny_model."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    run = tmp_path_factory.mktemp("runs") / "tiny_lora"
    torch.manual_seed(1)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model),
                           LoraConfig(r=4, lora_alpha=64, target_modules="all-linear", init_lora_weights=False))
    model.save_pretrained(run / "adapter")
    spec = specmod.load(None, [f"model.name_or_path={tiny_model}", f"output_dir={run}"])
    specmod.dump(spec, run / "spec.yaml")
    specmod.dump(spec, run / "adapter" / "spec.yaml")
    return run


@pytest.fixture
def noref_dir(data_dir) -> Path:
    (data_dir / "noref.json").write_text(json.dumps(NOREF))
    info = json.loads((data_dir / "dataset_info.json").read_text())
    info["noref"] = {"file_name": "noref.json"}
    (data_dir / "dataset_info.json").write_text(json.dumps(info))
    return data_dir


def test_labels_are_the_last_assistant_turn():
    spec = specmod.load(None, ["task=eval", "data.eval_dataset=[chat_demo_eval,identity_eval]", "data.max_samples=3"])
    samples = evaluate.read_samples(spec)
    raw = json.loads((ROOT / "data" / "chat_demo_eval.json").read_text())[:3]
    chats = [s for s in samples if s.dataset == "chat_demo_eval"]
    assert len(chats) == 3 and len(samples) == 6
    for s, rec in zip(chats, raw):
        turns = [t for t in rec["conversations"] if t["from"] != "system"]
        assert s.label == turns[-1]["value"] and s.messages[-1]["role"] == "user"
        assert [m["content"] for m in s.messages if m["role"] != "system"] == [t["value"] for t in turns[:-1]]


def _tiny_eval(tiny_model, tiny_run, n: int):
    """The tiny model with its adapter, and the prompts of `n` alpaca_demo_eval samples as the eval job builds them."""
    from studio.data.templates import Template

    spec = specmod.load(None, ["task=eval", f"model.name_or_path={tiny_model}", f"model.adapter={tiny_run}",
                               "data.eval_dataset=[alpaca_demo_eval]", f"data.max_samples={n}"])
    samples = evaluate.read_samples(spec)
    model, tok = evaluate.load(spec, evaluate.plan(spec)[0])
    template = Template("auto", tok)
    return samples, model, tok, template, [evaluate.prompt_ids(s.messages, template, 1024) for s in samples]


def test_batched_generation_equals_one_at_a_time(tiny_model, tiny_run, monkeypatch):
    """Left padding, length sorting and finished rows leaving the batch (with their KV cache) change nothing: greedy
    answers match batch size 1, in the original order."""
    from studio.evaluate import batchgen

    monkeypatch.setattr(batchgen, "CHUNK", 3)  # rounds of 3 tokens: rows leave and join at several points
    samples, model, tok, template, prompts = _tiny_eval(tiny_model, tiny_run, 10)
    assert len({len(p) for p in prompts}) > 3  # lengths differ, so batches are padded
    assert tok.decode(prompts[0]) == template.prompt(samples[0].messages)  # the prompt is the chat template's, exactly
    one, n1 = evaluate.generate(model, tok, template, prompts, specmod.EvalSpec(batch_size=1, max_new_tokens=12), print)
    many, n4 = evaluate.generate(model, tok, template, prompts, specmod.EvalSpec(batch_size=4, max_new_tokens=12), print)
    assert one == many and n1 == n4 and n1 > 0 and len(set(one)) > 1
    # a token the model writes now and then becomes a stop token: answers end at different rounds, rows leave
    from collections import Counter

    word = Counter(t for a in one for t in tok(a, add_special_tokens=False)["input_ids"][1:]).most_common(1)[0][0]
    monkeypatch.setattr(template, "stop_token_ids", lambda ids=template.stop_token_ids(): [*ids, word])
    joins, join = [], batchgen.join
    monkeypatch.setattr(batchgen, "join", lambda a, b, pad: joins.append(len(b["rows"])) or join(a, b, pad))
    one, n1 = evaluate.generate(model, tok, template, prompts, specmod.EvalSpec(batch_size=1, max_new_tokens=12), print)
    many, n4 = evaluate.generate(model, tok, template, prompts, specmod.EvalSpec(batch_size=4, max_new_tokens=12), print)
    assert one == many and n1 == n4 and 0 < n1 < 12 * len(prompts)
    assert joins  # waiting prompts took the rows that finished, their cache joined to the running one


def test_out_of_memory_in_generation_halves_the_batch(tiny_model, tiny_run, monkeypatch):
    """Rows under way when memory runs out start again in smaller batches; the answers are those of batch size 1."""
    import torch

    _, model, tok, template, prompts = _tiny_eval(tiny_model, tiny_run, 7)
    one, _ = evaluate.generate(model, tok, template, prompts, specmod.EvalSpec(batch_size=1, max_new_tokens=6), print)
    real = model.generate

    def generate(**kw):
        if kw["input_ids"].shape[0] > 2 and kw.get("past_key_values") is not None:  # fails mid-answer, not at once
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real(**kw)

    monkeypatch.setattr(model, "generate", generate)
    said = []
    many, _ = evaluate.generate(model, tok, template, prompts, specmod.EvalSpec(batch_size=8, max_new_tokens=6), said.append)
    assert many == one
    assert said == ["out of memory at batch size 8: going on with batch size 4 (set eval.batch_size=4 to start there)",
                    "out of memory at batch size 4: going on with batch size 2 (set eval.batch_size=2 to start there)"]


def test_out_of_memory_halves_the_batch():
    import torch

    from studio.model.models import ModelError

    seen, said = [], []

    def step(idx):
        if len(idx) > 2:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        seen.extend(idx)

    done = list(evaluate.batched(list(range(7)), 8, step, said.append))
    assert sorted(seen) == list(range(7)) and done[-1] == 7
    assert said == ["out of memory at batch size 8: going on with batch size 4 (set eval.batch_size=4 to start there)",
                    "out of memory at batch size 4: going on with batch size 2 (set eval.batch_size=2 to start there)"]

    def always(idx):
        raise torch.OutOfMemoryError("CUDA out of memory")

    with pytest.raises(ModelError, match="batch size 1"):
        list(evaluate.batched([0, 1], 2, always, said.append))


def test_compare_base_and_adapter_through_the_cli(tiny_model, tiny_run, noref_dir, tmp_path):
    out = tmp_path / "eval"
    r = _studio("eval", f"model.name_or_path={tiny_model}", f"model.adapter={tiny_run}", "eval.compare=[base]",
                f"data.dataset_dir={noref_dir}", "data.eval_dataset=[identity_eval,noref]", "eval.batch_size=4",
                "eval.max_new_tokens=8", f"output_dir={out}")
    assert r.returncode == 0, r.stdout + r.stderr
    events = ev.read_all(out)
    assert events[0]["event"] == "start" and events[0]["models"] == ["base", "tiny_lora"] and events[-1]["event"] == "done"
    prog = [e for e in events if e["event"] == "progress"]
    assert [p["done"] for p in prog] == sorted(p["done"] for p in prog) and prog[-1]["done"] == prog[-1]["total"] == 38
    assert all(p["rate"] > 0 and p["eta_s"] >= 0 for p in prog)

    result = json.loads((out / "metrics.json").read_text())
    assert [m["name"] for m in result["models"]] == ["base", "tiny_lora"]
    queries = [json.loads(x)["instruction"] for x in [json.dumps(d) for d in json.loads((ROOT / "data" / "identity_eval.json").read_text())]]
    preds = {}
    for m in result["models"]:
        rows = [json.loads(line) for line in (out / m["predictions"]).read_text().splitlines()]
        preds[m["name"]] = [row["predict"] for row in rows]
        assert [row["query"] for row in rows] == queries + [d["instruction"] for d in NOREF]  # original order
        scored = [row for row in rows if row["label"] is not None]
        assert len(scored) == 16 and all(set(metrics.KEYS) <= set(row) for row in scored)
        assert {k: m[k] for k in metrics.KEYS} == metrics.mean(scored)
        assert m["scored"] == 16 and m["samples"] == 19 and "3 of 19 samples have no reference" in m["note"]
        assert m["eval_loss"] > 0 and m["perplexity"] == pytest.approx(math.exp(m["eval_loss"]), rel=1e-3)
        assert m["samples_per_second"] > 0 and m["generated_tokens"] > 0
        # `studio eval score` gives the same numbers from the file alone
        s = _studio("eval", "score", out / m["predictions"], timeout=120)
        assert s.returncode == 0, s.stderr
        assert {k: json.loads(s.stdout)[k] for k in metrics.KEYS} == {k: m[k] for k in metrics.KEYS}
    assert preds["base"] != preds["tiny_lora"]
    assert "base" in r.stdout and "tiny_lora" in r.stdout and "rouge-l" in r.stdout

    hist = [json.loads(line) for line in (tiny_run / evaluate.HISTORY).read_text().splitlines()]
    assert hist[-1]["eval_run"] == str(out.resolve()) and hist[-1]["compared_with"] == ["base"]
    assert hist[-1]["rouge-l"] == result["models"][1]["rouge-l"]
    listing = _studio("runs", "--root", tiny_run.parent, timeout=120)
    assert f"rouge-l {hist[-1]['rouge-l']:.2f}" in listing.stdout and str(out.resolve()) in listing.stdout


def test_data_without_references_gives_predictions_only(tiny_model, tiny_run, noref_dir, tmp_path):
    spec = specmod.load(None, ["task=eval", f"model.name_or_path={tiny_model}", f"model.adapter={tiny_run}", f"data.dataset_dir={noref_dir}",
                               "data.eval_dataset=[noref]", "eval.max_new_tokens=4", f"output_dir={tmp_path}"])
    evaluate.run(spec, tmp_path, ev.EventWriter(tmp_path, enabled=True))
    result = json.loads((tmp_path / "metrics.json").read_text())
    assert "rouge-l" not in result and "bleu-4" not in result and "eval_loss" not in result
    assert result["note"].startswith("no reference answers")
    rows = [json.loads(line) for line in (tmp_path / "predictions.jsonl").read_text().splitlines()]
    assert len(rows) == 3 and all(r["label"] is None and "rouge-l" not in r and r["predict"] for r in rows)
    notes = [e["text"] for e in ev.read_all(tmp_path) if e["event"] == "message"]
    assert any("no reference answers" in n for n in notes)


def test_adapter_of_another_base_is_refused(tiny_model, tiny_run, tmp_path):
    r = _studio("eval", f"model.adapter={tiny_run}", "data.eval_dataset=[identity_eval]", f"output_dir={tmp_path / 'e'}", timeout=120)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert str(tiny_model) in r.stderr and "`default`" in r.stderr and f"model.name_or_path={tiny_model}" in r.stderr
    assert not (tmp_path / "e").exists()
    r = _studio("eval", f"output_dir={tiny_run}", f"model.name_or_path={tiny_model}", timeout=120)
    assert r.returncode == 2 and "holds a training run" in r.stderr


def test_bad_predictions_file_names_the_line(tmp_path):
    f = tmp_path / "p.jsonl"
    f.write_text('{"predict": "a", "label": "a"}\n{oops\n')
    r = _studio("eval", "score", f, timeout=120)
    assert r.returncode == 2 and f"{f}:2" in r.stderr and "Traceback" not in r.stderr


def test_sigterm_aborts_an_evaluation(tiny_model, tmp_path):
    out = tmp_path / "eval"
    r = _studio("eval", f"model.name_or_path={tiny_model}", "data.eval_dataset=[alpaca_demo]", "eval.batch_size=1",
                "eval.max_new_tokens=200", f"output_dir={out}", "--detach", timeout=120)
    assert r.returncode == 0, r.stderr
    deadline = time.time() + 180
    while time.time() < deadline and not any(e["event"] == "progress" for e in ev.read_all(out)):
        time.sleep(0.2)
    assert runs.status(out) == "running"
    assert process.stop(out, grace=30)
    last = ev.final(ev.read_all(out))
    assert last["event"] == "aborted" and 1 <= last["step"] < 90 and not last.get("killed")
    assert runs.status(out) == "aborted" and not (out / "metrics.json").exists()


def test_example_spec_loads():
    spec = specmod.load(ROOT / "examples" / "eval_identity.yaml")
    assert spec.task == "eval" and spec.eval.compare == ["base"] and spec.data.eval_dataset == ["identity_eval"]
    assert (ROOT / "examples" / "eval_identity.yaml").read_text().startswith("# studio eval examples/eval_identity.yaml")


@pytest.mark.slow
def test_identity_adapter_beats_the_base_model(identity_run, tmp_path):
    out = tmp_path / "eval"
    r = _studio("eval", ROOT / "examples" / "eval_identity.yaml", f"model.adapter={identity_run}", f"output_dir={out}",
                f"data.dataset_dir={ROOT / 'data'}", timeout=1200)
    assert r.returncode == 0, r.stdout + r.stderr
    by_name = {m["name"]: m for m in json.loads((out / "metrics.json").read_text())["models"]}
    base, tuned = by_name["base"], by_name[identity_run.name]
    assert tuned["rouge-l"] >= base["rouge-l"] + 30, (base, tuned)
    assert tuned["eval_loss"] < base["eval_loss"]
    rows = [json.loads(line) for line in (out / tuned["predictions"]).read_text().splitlines()]
    assert sum("Pico" in row["predict"] for row in rows) >= 12
