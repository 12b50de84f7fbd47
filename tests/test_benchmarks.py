"""Benchmarks through lm-eval (studio/evaluate/benchmarks.py): the numbers of lm-eval run directly, the checks before
a run, the base-score cache, local data read from any working folder, and the shipped pack on the default model."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
pytest.importorskip("lm_eval")

from studio.errors import UserError  # noqa: E402
from studio.evaluate import benchmarks  # noqa: E402
from studio import spec as specmod  # noqa: E402
from studio.run import events as ev  # noqa: E402

from conftest import ROOT  # noqa: E402

PACK_TASKS = ["studio_identity", "studio_general_mc", "studio_short_answer"]


@pytest.fixture(scope="module")
def tiny_adapter(tiny_model, tmp_path_factory):
    """A LoRA adapter of the tiny model whose lora_B is random (peft starts it at zero: the same as the base)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    out = tmp_path_factory.mktemp("adapter") / "lora"
    torch.manual_seed(1)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model), LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    for name, p in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.5)
    model.save_pretrained(out)
    return out


def _lm_eval_direct(model_args: str, tasks: list[str], limit: int) -> dict:
    """lm-eval on its own: model="hf" from a model_args string, the pack as an include path, run from the pack's
    folder (lm-eval reads relative data_files from the working folder)."""
    import lm_eval
    from lm_eval.tasks import TaskManager

    cwd = os.getcwd()
    os.chdir(benchmarks.pack_dir())
    try:
        tm = TaskManager(include_path=str(benchmarks.pack_dir()), include_defaults=False)
        res = lm_eval.simple_evaluate(model="hf", model_args=model_args, tasks=tasks, limit=limit, batch_size=4,
                                      device="cpu", task_manager=tm, log_samples=False)
    finally:
        os.chdir(cwd)
    return res


def test_scores_equal_those_of_lm_eval_run_directly(tiny_model, tiny_adapter, tmp_path):
    limit = 5
    seen = []
    ours = benchmarks.score(str(tiny_model), {"lora": str(tiny_adapter)}, PACK_TASKS, limit=limit, batch_size=4,
                            dtype="fp32", cache_dir=tmp_path, on_progress=lambda done, total, msg: seen.append((done, total)))
    assert ours["tasks"] == PACK_TASKS and set(ours["models"]) == {"base", "lora"}
    assert seen[-1] == (6, 6) and [d for d, _ in seen] == sorted(d for d, _ in seen)
    direct = {"base": _lm_eval_direct(f"pretrained={tiny_model},dtype=float32", PACK_TASKS, limit),
              "lora": _lm_eval_direct(f"pretrained={tiny_model},peft={tiny_adapter},dtype=float32", PACK_TASKS, limit)}
    for who in ("base", "lora"):
        for task in PACK_TASKS:
            entry, row = ours["models"][who][task], direct[who]["results"][task]
            assert entry["n"] == direct[who]["n-samples"][task]["effective"] == limit
            assert entry["version"] == 1.0 and not entry["cached"]
            for name, m in entry["metrics"].items():
                metric, filt = (name.split(",") + ["none"])[:2]
                assert m["value"] == pytest.approx(row[f"{metric},{filt}"], abs=1e-9), (who, task, name)
                assert m["stderr"] == pytest.approx(row[f"{metric}_stderr,{filt}"], abs=1e-9), (who, task, name)
    assert set(ours["models"]["base"]["studio_identity"]["metrics"]) == {"acc", "acc_norm"}
    assert ours["models"]["base"]["studio_short_answer"]["metric"] == "exact_match,strip"
    values = {who: [m["value"] for t in PACK_TASKS for m in ours["models"][who][t]["metrics"].values()] for who in ("base", "lora")}
    assert values["base"] != values["lora"]  # the adapter was applied (and disabled for the base)
    for task in PACK_TASKS:
        e, b = ours["models"]["lora"][task], ours["models"]["base"][task]
        assert e["delta"] == pytest.approx(e["value"] - b["value"])


def _task_folder(folder, name="my_mc", data="my_mc.jsonl"):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.yaml").write_text(
        f"task: {name}\ndataset_path: json\ndataset_kwargs:\n  data_files: {{test: {data}}}\ntest_split: test\n"
        "output_type: multiple_choice\ndoc_to_text: \"Question: {{question}}\\nAnswer:\"\ndoc_to_choice: choices\n"
        "doc_to_target: answer\nmetric_list:\n  - {metric: acc, aggregation: mean, higher_is_better: true}\n"
        "metadata: {version: 2.0}\n")
    rows = [{"question": f"What is {i} + 1?", "choices": [str(i + 1), str(i + 2), str(i)], "answer": 0} for i in range(6)]
    (folder / "my_mc.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder


def test_check_tasks_names_the_problem(tmp_path):
    assert benchmarks.check_tasks(PACK_TASKS + ["studio_pack"]) == []
    problems = benchmarks.check_tasks(["studio_identiy"])
    assert len(problems) == 1 and "unknown task `studio_identiy`" in problems[0] and "studio_identity" in problems[0]

    tasks = _task_folder(tmp_path / "tasks", name="needs_data", data="missing.jsonl")
    broken = tasks / "broken.yaml"
    broken.write_text("task: broken_task\ndataset_path: json\n  output_type: [multiple_choice\n")
    problems = benchmarks.check_tasks(["needs_data", "broken_task", "studio_pack"], [tasks, tmp_path / "nowhere"])
    assert f"task folder {tmp_path / 'nowhere'} not found" in problems
    assert any(p.startswith(f"{broken}, line 3, column 14: ") for p in problems), problems
    assert any(f"data file {tasks / 'missing.jsonl'} not found" in p and str(tasks / "needs_data.yaml") in p for p in problems)
    assert any(p.startswith("unknown task `broken_task` (it is named in") for p in problems), problems
    assert len(problems) == 4, problems
    with pytest.raises(benchmarks.BenchmarkError, match="missing.jsonl"):
        benchmarks.score("default", {}, ["needs_data"], [tasks])  # refused before a model loads


def test_the_base_is_cached_and_local_data_is_found_from_any_folder(tiny_model, tiny_adapter, tmp_path, monkeypatch):
    tasks = _task_folder(tmp_path / "tasks")
    monkeypatch.chdir(tmp_path)  # not the task folder: its relative data_files name a file beside the YAML file
    cache = tmp_path / "cache"
    first = benchmarks.score(str(tiny_model), None, ["my_mc"], [tasks], dtype="fp32", cache_dir=cache)
    second = benchmarks.score(str(tiny_model), None, ["my_mc"], [tasks], dtype="fp32", cache_dir=cache)
    a, b = first["models"]["base"]["my_mc"], second["models"]["base"]["my_mc"]
    assert not a["cached"] and b["cached"] and first["settings"]["load_seconds"] is not None
    assert second["settings"]["load_seconds"] is None  # nothing to score: no model loaded
    assert {k: v for k, v in a.items() if k != "cached"} == {k: v for k, v in b.items() if k != "cached"}
    assert a["n"] == 6 and a["version"] == 2.0
    both = benchmarks.score(str(tiny_model), {"lora": str(tiny_adapter)}, ["my_mc"], [tasks], dtype="fp32", cache_dir=cache)
    base, lora = both["models"]["base"]["my_mc"], both["models"]["lora"]["my_mc"]
    assert base["cached"] and not lora["cached"] and lora["delta"] == pytest.approx(lora["value"] - a["value"])
    other = benchmarks.score(str(tiny_model), None, ["my_mc"], [tasks], limit=3, dtype="fp32", cache_dir=cache)
    assert not other["models"]["base"]["my_mc"]["cached"] and other["models"]["base"]["my_mc"]["n"] == 3
    with open(tasks / "my_mc.jsonl", "a") as f:  # the data changed: scored again
        f.write(json.dumps({"question": "What is 9 + 1?", "choices": ["10", "11", "9"], "answer": 0}) + "\n")
    again = benchmarks.score(str(tiny_model), None, ["my_mc"], [tasks], dtype="fp32", cache_dir=cache)
    assert not again["models"]["base"]["my_mc"]["cached"] and again["models"]["base"]["my_mc"]["n"] == 7


def test_an_adapter_of_another_base_is_refused(tiny_model, tiny_adapter, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(tiny_adapter, run / "adapter")
    cfg = json.loads((run / "adapter" / "adapter_config.json").read_text())
    (run / "adapter" / "adapter_config.json").write_text(json.dumps({**cfg, "base_model_name_or_path": "other/model"}))
    with pytest.raises(UserError, match=r"was trained on `other/model`, not on"):  # model.source.check_base
        benchmarks.score(str(tiny_model), {"other": str(run)}, ["studio_identity"], cache_dir=tmp_path)
    with pytest.raises(UserError, match="holds no adapter"):  # models.ModelError
        benchmarks.score(str(tiny_model), {"none": str(tmp_path)}, ["studio_identity"], cache_dir=tmp_path)


def _studio(*args, timeout=600):
    return subprocess.run([sys.executable, "-m", "studio", *map(str, args)], capture_output=True, text=True, cwd=ROOT, timeout=timeout)


def test_bad_benchmarks_are_refused_before_the_job_starts(tiny_model, tmp_path):
    tasks = _task_folder(tmp_path / "tasks")
    (tasks / "broken.yaml").write_text("task: broken_task\ndataset_path: json\n  output_type: [multiple_choice\n")
    out = tmp_path / "e"
    r = _studio("eval", f"model.name_or_path={tiny_model}", "eval.benchmarks=[studio_identiy,my_mc]",
                f"eval.benchmark_dirs=[{tasks}]", f"output_dir={out}", timeout=300)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert "unknown task `studio_identiy`" in r.stderr and "did you mean studio_identity" in r.stderr
    assert f"{tasks / 'broken.yaml'}, line 3" in r.stderr
    assert not out.exists()


def test_an_eval_job_scores_benchmarks_of_base_and_run_in_one_job(tiny_model, tiny_adapter, tmp_path):
    """Through the CLI: no eval dataset (benchmarks only), base and a run; RUN/benchmarks.json, events, deltas."""
    run = tmp_path / "runs" / "tiny_lora"
    shutil.copytree(tiny_adapter, run / "adapter")
    specmod.dump(specmod.load(None, [f"model.name_or_path={tiny_model}", f"output_dir={run}"]), run / "spec.yaml")
    tasks = _task_folder(tmp_path / "tasks")
    out = tmp_path / "eval"
    r = _studio("eval", f"model.name_or_path={tiny_model}", f"model.adapter={run}", "eval.compare=[base]",
                "eval.benchmarks=[my_mc,studio_identity]", f"eval.benchmark_dirs=[{tasks}]", "eval.benchmark_limit=4",
                "train.compute_dtype=fp32", f"output_dir={out}", timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    bench = json.loads((out / "benchmarks.json").read_text())
    assert bench["tasks"] == ["my_mc", "studio_identity"] and list(bench["models"]) == ["base", "tiny_lora"]
    direct = benchmarks.score(str(tiny_model), {"tiny_lora": str(run)}, ["my_mc", "studio_identity"], [tasks], limit=4,
                              dtype="fp32", apply_chat_template=True, cache_dir=tmp_path / "direct")
    for who in ("base", "tiny_lora"):
        for task in bench["tasks"]:
            assert bench["models"][who][task]["value"] == pytest.approx(direct["models"][who][task]["value"], abs=1e-9)
            assert bench["models"][who][task]["n"] == 4
    lora = bench["models"]["tiny_lora"]["my_mc"]
    assert lora["delta"] == pytest.approx(lora["value"] - bench["models"]["base"]["my_mc"]["value"])
    assert lora["lost"] == (lora["delta"] < 0 and -lora["delta"] > lora["delta_stderr"])
    events = ev.read_all(out)
    prog = [e for e in events if e["event"] == "progress"]
    assert prog and prog[-1]["done"] == prog[-1]["total"] == 4 and prog[-1]["unit"] == "benchmark tasks"
    assert events[-1]["event"] == "done" and "my_mc" in r.stdout
    assert not (out / "predictions.jsonl").exists()  # no eval dataset named: benchmarks only


@pytest.mark.slow
def test_the_pack_on_the_default_model_base_and_identity_run_in_one_job(identity_run, tmp_path):
    out = tmp_path / "eval"
    r = _studio("eval", f"model.adapter={identity_run}", "eval.compare=[base]", "eval.benchmarks=[studio_pack]",
                f"output_dir={out}", timeout=1200)
    assert r.returncode == 0, r.stdout + r.stderr
    res = json.loads((out / "benchmarks.json").read_text())
    assert res["tasks"] == PACK_TASKS
    base, run = res["models"]["base"], res["models"][identity_run.name]
    print(f"\nload {res['settings']['load_seconds']} s; apply_chat_template={res['settings']['apply_chat_template']}")
    print(f"{'task':22} {'metric':18} {'base':>14} {'identity_lora':>14} {'delta':>7}  seconds (base, run)")
    for task in PACK_TASKS:
        for m, v in base[task]["metrics"].items():
            rr = run[task]["metrics"][m]
            print(f"{task:22} {m:18} {v['value']:6.3f} ± {v['stderr']:.3f} {rr['value']:6.3f} ± {rr['stderr']:.3f} "
                  f"{rr['delta']:+7.3f}  {base[task]['seconds']}, {run[task]['seconds']}")
    assert run["studio_identity"]["value"] > base["studio_identity"]["value"] + 0.5  # the run teaches the name Pico
