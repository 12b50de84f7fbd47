"""Preference and RL stages (dpo, kto, rm, grpo): each trains a few steps on the tiny model and ends `done` with its
metrics in the log events; user reward functions; refusals before start.

    .venv/bin/python -m pytest -q tests/test_stages.py
"""
from __future__ import annotations

import json
import signal
import subprocess
import sys

import pytest

from conftest import ROOT, tiny_spec
from studio.run import events as ev
from studio import spec as specmod
from studio.data.registry import DataError
from studio.spec import SpecError

FAST = {"data.max_samples": 4, "train.max_steps": 2, "train.save_steps": 100}


def _spec(tiny_model, tmp_path, **over):
    return specmod.load(ROOT / "examples" / "identity_lora.yaml", tiny_spec(tiny_model, tmp_path, **{**FAST, **over}))


def _run_in_process(spec, tmp_path):
    """The child's own entry point (studio.train.main) on a run folder, in this process."""
    from studio.train import job as train

    run = tmp_path / "run"
    specmod.dump(spec, run / "spec.yaml")
    old = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    try:
        rc = train.main([str(run)])
    finally:
        signal.signal(signal.SIGINT, old[0])
        signal.signal(signal.SIGTERM, old[1])
    return rc, ev.read_all(run)


def _logs(events):
    return [e for e in events if e["event"] == "log"]


def test_dpo_through_the_cli_logs_margins_and_the_adapter_reloads_in_peft(tiny_model, tmp_path):
    args = tiny_spec(tiny_model, tmp_path, **{**FAST, "method.stage": "dpo", "data.dataset": "[identity_pairs]",
                                               "data.eval_dataset": "[identity_pairs_eval]"})
    r = subprocess.run([sys.executable, "-m", "studio", "train", str(ROOT / "examples" / "identity_lora.yaml"), *args],
                       capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    events = ev.read_all(tmp_path / "run")
    logs = _logs(events)
    assert [e["step"] for e in logs] == [1, 2]
    for key in ("rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies", "logps/chosen"):
        assert all(key in e for e in logs), key
    assert logs[0]["rewards/margins"] == 0.0  # the reference is the policy with its (zero-initialised) adapter off
    done = events[-1]
    assert done["event"] == "done" and "eval_rewards/accuracies" in done and "eval_rewards/margins" in done
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model), str(tmp_path / "run" / "adapter"))
    from studio.evaluate.prefscore import score_pairs
    from studio.data import preference
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tmp_path / "run" / "adapter")
    rows = preference.read(ROOT / "data", ["identity_pairs_eval"], "dpo", max_samples=2)
    scores = score_pairs(model, tok, rows)
    assert scores["pairs"] == 2 and 0 <= scores["margin_positive"] <= 1
    # `studio eval` on held-out pairs: the share of pairs the run prefers the chosen answer of, next to its base
    out = tmp_path / "pairs"
    r = subprocess.run([sys.executable, "-m", "studio", "eval", f"output_dir={out}", f"model.name_or_path={tiny_model}",
                        f"model.adapter={tmp_path / 'run'}", f"data.dataset_dir={ROOT / 'data'}", "data.eval_dataset=[identity_pairs_eval]"],
                       capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    result = json.loads((out / "metrics.json").read_text())
    base, row = result["models"]  # one row per model: the base (the reference of every margin), then the run
    n = len(json.loads((ROOT / "data" / "identity_pairs_eval.json").read_text()))
    assert result["pairs"] and base["name"] == "base" and row["name"] == "run" and row["pairs"] == base["pairs"] == n
    assert all(0 <= row[k] <= 1 for k in ("prefers_chosen", "margin_positive")) and 0 <= base["prefers_chosen"] <= 1, row
    assert "margin_positive" not in base
    pairs_done = [e for e in ev.read_all(out) if e["event"] == "progress"]
    assert pairs_done[-1]["done"] == pairs_done[-1]["total"] == n and pairs_done[-1]["unit"] == "pairs"  # progress in pairs
    from studio.ui.evaluate_tab import metrics_frame

    frame = metrics_frame(result)
    assert list(frame.columns) == ["model", "pairs", "prefers_chosen", "margin_positive", "mean_margin"]
    assert list(frame["model"]) == ["base", "run"]
    # pairs score preference runs only: the base model alone is refused before start, naming the field
    r = subprocess.run([sys.executable, "-m", "studio", "eval", f"output_dir={tmp_path / 'base_pairs'}", f"model.name_or_path={tiny_model}",
                        f"data.dataset_dir={ROOT / 'data'}", "data.eval_dataset=[identity_pairs_eval]"],
                       capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert r.returncode != 0 and "data.eval_dataset holds preference pairs" in r.stdout + r.stderr and "Traceback" not in r.stderr
    # chat and export take the run folder as they take an SFT run's
    from studio.chat.session import ChatSession, GenParams

    s = ChatSession()
    s.load(adapter=str(tmp_path / "run"))
    assert type(s.model).__name__.startswith("Peft")
    assert isinstance(s.reply([], "Who are you?", params=GenParams(max_new_tokens=3, temperature=0)), str)
    s.unload()
    from studio.export import job as export

    out = tmp_path / "exp"
    specmod.dump(specmod.load(None, ["task=export", f"output_dir={out}", f"model.adapter={tmp_path / 'run'}", f"model.name_or_path={tiny_model}", "export.gguf=[]",
                                     "export.dtype=fp32"]), out / "spec.yaml")
    old = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    try:
        assert export.main([str(out)]) == 0
    finally:
        signal.signal(signal.SIGTERM, old[0])
        signal.signal(signal.SIGINT, old[1])
    done = ev.read_all(out)[-1]
    assert done["event"] == "done" and (out / "export" / "model.safetensors").exists(), done


@pytest.mark.parametrize("stage,over,keys", [
    ("kto", {"data.dataset": "[identity_pairs]"}, ("kl", "rewards/chosen", "rewards/rejected", "logps/chosen")),
    ("rm", {"data.dataset": "[identity_pairs]"}, ("accuracy", "margin", "mean_reward")),
    ("dpo", {"data.dataset": "[identity_pairs]", "method.dpo.loss": "orpo"}, ("log_odds_ratio", "nll_loss", "rewards/margins")),
])
def test_stage_trains_and_logs_its_metrics(tiny_model, tmp_path, stage, over, keys):
    rc, events = _run_in_process(_spec(tiny_model, tmp_path, **{"method.stage": stage, **over}), tmp_path)
    assert rc == 0 and events[-1]["event"] == "done", events[-1]
    logs = _logs(events)
    assert logs and all(k in logs[-1] for k in keys), sorted(logs[-1])
    assert (tmp_path / "run" / "adapter" / "adapter_config.json").exists()


def test_grpo_with_a_user_reward_file_logs_each_function(tiny_model, tmp_path):
    over = {"method.stage": "grpo", "data.dataset": "[arith_prompts]", "method.grpo.num_generations": 2,
            "method.grpo.max_completion_length": 6, "method.grpo.reward_funcs": "[examples/rewards.py:number_only, numeric]",
            "method.grpo.reward_weights": "[1.0, 0.5]"}
    rc, events = _run_in_process(_spec(tiny_model, tmp_path, **over), tmp_path)
    assert rc == 0 and events[-1]["event"] == "done", events[-1]
    log = _logs(events)[-1]
    for key in ("reward", "reward_std", "rewards/number_only/mean", "rewards/numeric/mean", "completions/mean_length"):
        assert key in log, sorted(log)
    samples = [e for e in events if e["event"] == "samples"]  # the page shows the latest completions and their rewards
    assert samples and samples[-1]["step"] == log["step"], samples[-1:]
    items = samples[-1]["items"]
    assert 1 <= len(items) <= 4 and all(set(it["rewards"]) == {"number_only", "numeric"} for it in items), items
    assert all("What is" in it["prompt"] and isinstance(it["completion"], str) for it in items), items
    from studio.ui import stage_fields

    shown = stage_fields.samples_html(events)
    assert f"step {log['step']}" in shown and "number_only" in shown and "numeric" in shown


def test_a_broken_reward_function_stops_the_job_naming_it_and_the_sample(tiny_model, tmp_path):
    rewards = tmp_path / "my_rewards.py"
    rewards.write_text("def picky(completions, **kw):\n"
                       "    return [1.0 / (len(c[0]['content']) - len(c[0]['content'])) for c in completions]\n")
    over = {"method.stage": "grpo", "data.dataset": "[arith_prompts]", "method.grpo.num_generations": 2,
            "method.grpo.max_completion_length": 4, "method.grpo.reward_funcs": f"[{rewards}:picky]"}
    rc, events = _run_in_process(_spec(tiny_model, tmp_path, **over), tmp_path)
    err = events[-1]
    assert rc == 1 and err["event"] == "error" and err["traceback"] == ""
    assert "reward function `picky` raised ZeroDivisionError" in err["message"] and "sample 0" in err["message"]


def test_reward_guard_refuses_wrong_counts_and_non_numbers():
    from studio.train.rewards import RewardError, guard

    batch = {"prompts": [[{"role": "user", "content": "q1"}], [{"role": "user", "content": "q2"}]],
             "completions": [[{"role": "assistant", "content": "a1"}], [{"role": "assistant", "content": "a2"}]]}
    assert guard("ok", lambda completions, **kw: [1, None])(**batch) == [1.0, None]
    with pytest.raises(RewardError, match=r"`short` returned 1 value\(s\) for 2 completions"):
        guard("short", lambda completions, **kw: [1.0])(**batch)
    with pytest.raises(RewardError, match=r"`wordy` returned 'yes' for sample 1 \(prompt 'q2', completion 'a2'\)"):
        guard("wordy", lambda completions, **kw: [1.0, "yes"])(**batch)
    with pytest.raises(RewardError, match=r"`one` raised KeyError: 'x' on sample 1"):
        guard("one", lambda completions, **kw: [{"a1": 1.0}[c[0]["content"]] if c[0]["content"] == "a1" else {}["x"]
                                               for c in completions])(**batch)


def test_builtin_rewards(tmp_path):
    from studio.train.rewards import load

    g = specmod.load(None, ["method.stage=grpo", "method.grpo.reward_funcs=[format, exact, numeric, length]",
                            r"method.grpo.format_regex='^Answer: \d+$'", "method.grpo.length_target=10"]).method.grpo
    fmt, exact, numeric, length = load(g)
    comp = [[{"role": "assistant", "content": t}] for t in ("Answer: 12", "it is 12.", "x" * 15)]
    ref = ["12", "It is 12", "3"]
    assert fmt(completions=comp) == [1.0, 0.0, 0.0]
    assert exact(completions=comp, reference=ref) == [0.0, 1.0, 0.0]
    assert numeric(completions=comp, reference=ref) == [1.0, 1.0, 0.0]
    assert length(completions=comp) == [1.0, 1.0, 0.5]


def _preflight(tiny_model, tmp_path, **over):
    from studio.launch.preflight import preflight

    preflight(_spec(tiny_model, tmp_path, **over))


def test_wrong_data_for_the_stage_is_refused_before_start_naming_the_entry(tiny_model, tmp_path):
    with pytest.raises(DataError, match="dataset `identity_pairs` is preference data.*method.stage=dpo"):
        _preflight(tiny_model, tmp_path, **{"data.dataset": "[identity_pairs]"})
    with pytest.raises(DataError, match="dataset `identity` holds conversations.*stage dpo needs preference pairs"):
        _preflight(tiny_model, tmp_path, **{"method.stage": "dpo", "data.dataset": "[identity]"})
    with pytest.raises(DataError, match="dataset `arith_prompts` holds prompts.*stage kto needs"):
        _preflight(tiny_model, tmp_path, **{"method.stage": "kto", "data.dataset": "[arith_prompts]"})
    with pytest.raises(DataError, match="dataset `identity_pairs_eval` is preference data"):
        _preflight(tiny_model, tmp_path, **{"data.eval_dataset": "[identity_pairs_eval]"})
    _preflight(tiny_model, tmp_path, **{"method.stage": "grpo", "data.dataset": "[arith_prompts, identity]",
                                        "method.grpo.num_generations": 2})


def test_missing_reward_function_is_refused_before_start(tiny_model, tmp_path):
    f = tmp_path / "r.py"
    f.write_text("def good(completions, **kw):\n    return [0.0] * len(completions)\n")
    grpo = {"method.stage": "grpo", "data.dataset": "[arith_prompts]", "method.grpo.num_generations": 2}
    with pytest.raises(SpecError, match=r"defines no function `bad`; it defines: good"):
        _preflight(tiny_model, tmp_path, **grpo, **{"method.grpo.reward_funcs": f"[{f}:bad]"})
    with pytest.raises(SpecError, match=r"file .*nope.py not found"):
        _preflight(tiny_model, tmp_path, **grpo, **{"method.grpo.reward_funcs": f"[{tmp_path}/nope.py:good]"})


@pytest.mark.parametrize("over,field", [
    ({"method.stage": "dpo", "method.dpo.loss": "orpo", "method.dpo.ftx": 0.5}, "method.dpo.ftx"),
    ({"method.stage": "dpo", "method.dpo.label_smoothing": 0.1}, "method.dpo.label_smoothing"),
    ({"method.stage": "dpo", "method.dpo.loss": "simpo", "method.dpo.ref_model": "x"}, "method.dpo.ref_model"),
    ({"method.stage": "dpo", "data.packing": True}, "data.packing"),
    ({"method.stage": "kto", "method.finetuning_type": "prefix"}, "method.finetuning_type=prefix"),
    ({"method.stage": "rm", "method.finetuning_type": "ia3"}, "method.finetuning_type=ia3"),
    ({"method.stage": "grpo", "method.grpo.num_generations": 3}, "method.grpo.num_generations=3"),
    ({"method.stage": "grpo", "method.grpo.reward_weights": "[1, 2]"}, "method.grpo.reward_weights"),
    ({"method.stage": "grpo", "method.grpo.reward_funcs": "[rewards:f]"}, "method.grpo.reward_funcs"),
    ({"method.stage": "grpo", "method.grpo.format_regex": "("}, "method.grpo.format_regex"),
])
def test_invalid_combinations_are_refused_naming_the_fields(over, field):
    with pytest.raises(SpecError) as e:
        specmod.load(None, [f"{k}={v}" for k, v in over.items()])
    assert field in str(e.value)


def test_stage_fields_have_help():
    for name in ("method.dpo.beta", "method.dpo.loss", "method.kto.desirable_weight", "method.grpo.reward_funcs",
                 "method.grpo.num_generations", "method.rm.center_rewards_coefficient"):
        assert len(specmod.field_help(name)) > 20, name
    assert specmod.field_info("method.stage")["choices"] == ["sft", "pt", "dpo", "kto", "rm", "grpo"]


def test_chat_tab_pairs_and_llamafactory_entries_become_trl_rows(data_dir):
    from studio.data import collect, preference

    collect.save_pair(data_dir, "my_pairs", [{"role": "user", "content": "Who are you?"}], "I am Pico.", "I am Nova.")
    rows = preference.read(data_dir, ["my_pairs"], "dpo")
    assert rows == [{"prompt": [{"role": "user", "content": "Who are you?"}],
                     "chosen": [{"role": "assistant", "content": "I am Pico."}],
                     "rejected": [{"role": "assistant", "content": "I am Nova."}]}]
    kto = preference.read(data_dir, ["my_pairs"], "kto")
    assert [r["label"] for r in kto] == [True, False]
    grpo = preference.read(data_dir, ["arith_prompts"], "grpo", max_samples=1)
    assert grpo[0]["prompt"][-1]["role"] == "user" and grpo[0]["reference"].lstrip("-").isdigit()
    shared = ROOT.parent / "shared" / "data" / "llamafactory"
    if shared.exists():
        assert len(preference.read(shared, ["dpo_en_demo"], "dpo", max_samples=3)) == 3
        assert {r["label"] for r in preference.read(shared, ["kto_en_demo"], "kto")} == {True, False}
    bad = data_dir / "bad_kto.json"
    bad.write_text(json.dumps([{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}], "label": "maybe"}]))
    info = json.loads((data_dir / "dataset_info.json").read_text())
    info["bad_kto"] = {"file_name": "bad_kto.json", "formatting": "sharegpt", "columns": {"messages": "messages", "kto_tag": "label"},
                       "tags": {"role_tag": "role", "content_tag": "content", "user_tag": "user", "assistant_tag": "assistant"}}
    (data_dir / "dataset_info.json").write_text(json.dumps(info))
    with pytest.raises(DataError, match=r"bad_kto.json.*column `label` must be true or false, got 'maybe'"):
        preference.read(data_dir, ["bad_kto"], "kto")


def test_page_offers_fitting_datasets_and_plots_stage_metrics():
    from studio.data import preference
    from studio.ui import stage_fields

    assert preference.fitting(ROOT / "data", "dpo") == ["identity_pairs", "identity_pairs_eval"]
    assert "arith_prompts" in preference.fitting(ROOT / "data", "grpo") and "identity_pairs" not in preference.fitting(ROOT / "data", "grpo")
    assert "identity_pairs" not in preference.fitting(ROOT / "data", "sft")
    events = [{"event": "log", "step": 1, "loss": 0.7, "rewards/margins": 0.1, "rewards/accuracies": 0.5},
              {"event": "log", "step": 2, "loss": 0.1, "reward": 0.4, "rewards/number_only/mean": 0.5, "kl": 0.01, "num_tokens": 9.0}]
    df = stage_fields.curves(events)
    assert set(df["series"]) == {"rewards/margins", "rewards/accuracies", "reward", "rewards/number_only/mean", "kl"}
    fields = {n for _, _, names in stage_fields.groups() for n in names}
    assert all(specmod.field_help(n) for n in fields)  # every field shown is a spec field with help


@pytest.mark.long  # minutes of generation or training on the default model: `make test-long`
def test_dpo_example_teaches_the_default_model_to_prefer_the_chosen_answers(tmp_path):
    """examples/dpo_identity.yaml as it ships: held-out pairs whose implicit reward margin is > 0 go to >= 90%."""
    from studio.evaluate.prefscore import score_run

    out = tmp_path / "dpo_identity"
    r = subprocess.run([sys.executable, "-m", "studio", "train", "examples/dpo_identity.yaml", f"output_dir={out}"],
                       capture_output=True, text=True, cwd=ROOT, timeout=3600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    done = ev.read_all(out)[-1]
    assert done["event"] == "done" and done["eval_rewards/accuracies"] >= 0.9, done
    scores = score_run(out)
    assert scores["pairs"] == 16 and scores["margin_positive"] >= 0.9, scores


def test_dataset_preview_shows_each_pair_with_both_answers_trained(tiny_model):
    from studio.data import preview

    r = preview.preview(specmod.load(None, [f"model.name_or_path={tiny_model}", "method.stage=dpo", "data.dataset=[identity_pairs]"]), limit=2)
    assert "reason" not in r and r["stats"]["records"] == 60
    (chosen, rejected) = r["examples"]
    assert "(chosen)" in chosen["loc"] and "(rejected)" in rejected["loc"]
    assert chosen["pieces"][-1][1] and "Pico" in chosen["pieces"][-1][0] and "Pico" not in rejected["pieces"][-1][0]
    assert not any(flag for _, flag in chosen["pieces"][:-1])  # the prompt carries no loss
    g = preview.preview(specmod.load(None, [f"model.name_or_path={tiny_model}", "method.stage=grpo", "data.dataset=[arith_prompts]",
                                            "method.grpo.num_generations=2"]), limit=1)
    assert "reason" not in g and "reference:" in g["examples"][0]["loc"]


def _page_spec(overrides: list[str]):
    """The page's first spec (train_tab.DEFAULTS) with `overrides`."""
    from studio.ui import train_tab

    data = specmod.parse_overrides(train_tab.DEFAULTS + overrides)
    data["output_dir"] = "runs/auto"
    return specmod.from_dict(specmod.JobSpec, data)


def test_choosing_a_stage_takes_its_defaults_and_drops_the_datasets_that_do_not_fit():
    """Issue #32, items 1-2: the page's dpo defaults learn on a few pairs (full rate from step 1, steps to spare), the
    page's own values come back for sft, and the SFT datasets chosen are dropped with a line naming them and why."""
    from studio.data import preference
    from studio.ui import stage_fields, train_tab

    base = train_tab.default_spec()
    page = {k: specmod.get(base, k) for k in stage_fields.form_values("sft", {})}
    dpo = stage_fields.form_values("dpo", page)
    assert dpo["train.max_steps"] >= 8 and dpo["train.warmup_ratio"] == 0 and dpo["train.warmup_steps"] == 0
    assert stage_fields.form_values("sft", page) == page and page["train.max_steps"] == -1
    spec = _page_spec(["method.stage=dpo", "data.dataset=[identity_pairs]"] + [f"{k}={v}" for k, v in dpo.items()])
    assert specmod.too_short(spec, 4) == ""
    kept, line = stage_fields.not_fitting("dpo", {"data.dataset": ["identity", "alpaca_demo"], "data.eval_dataset": []},
                                          preference.fitting(ROOT / "data", "dpo"), {"identity": "chat", "alpaca_demo": "chat"})
    assert kept == {"data.dataset": [], "data.eval_dataset": []}
    assert "`identity` (chat), `alpaca_demo` (chat)" in line and "data.dataset" in line and "ranking" in line, line
    assert stage_fields.not_fitting("dpo", {"data.dataset": ["identity_pairs"]}, ["identity_pairs"], {}) == ({"data.dataset": ["identity_pairs"]}, "")
    note = stage_fields.stage_note("dpo", dpo, line)
    assert "train.max_steps=" in note and "alpaca_demo" in note


def test_a_run_too_short_to_learn_is_named():
    """The page's SFT defaults on 4 pairs with stage dpo: 2 steps, 1 warming up (what the issue saw: nothing learned)."""
    spec = _page_spec(["method.stage=dpo"])
    line = specmod.too_short(spec, 4)
    assert "2 optimizer step(s), 1 of them warming up" in line and "train.max_steps" in line and "0.6931" in line, line
    assert specmod.too_short(spec, None) == ""  # a run by epochs whose data is not known is not judged
    spec.train.max_steps, spec.train.warmup_steps = 10, 8
    assert "10 optimizer step(s), 8 of them" in specmod.too_short(spec)
    spec.train.warmup_steps = 0
    assert specmod.too_short(spec) == ""
