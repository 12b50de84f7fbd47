"""The evaluate job's benchmark step and the training run's post-run benchmarks: the models of a plan scored by
studio.evaluate.benchmarks (lm-eval), written to RUN/benchmarks.json, and the table a person reads (models x tasks,
each run's delta against the base, `lost` where it fell by more than the difference's standard error).

    bench = run_benchmarks(spec, entries, say, progress)     # the plan's models (studio.evaluate.job.plan)
    rows(bench)                                              # [{"model", "task", "metric", "value", "stderr", "delta", "lost"}]
    after_training(spec, run_dir, say)                       # train.benchmarks on a finished run and its base

The base model is scored in every call (its scores are cached, so a second call reads them) so that each run has
a delta. A full fine-tune (a model/ folder) is scored as a model of its own; adapters share one loaded base.
"""
from __future__ import annotations

import json
from pathlib import Path

BENCHMARKS = "benchmarks.json"


def settings(spec) -> dict:
    """benchmarks.score's keyword arguments from the eval section (shared by the eval job and train.benchmarks)."""
    import torch

    e = spec.eval
    limit = e.benchmark_limit
    if limit is not None and limit >= 1:
        limit = int(limit)
    return {"task_dirs": list(e.benchmark_dirs), "num_fewshot": e.num_fewshot, "limit": limit,
            "batch_size": e.benchmark_batch_size, "apply_chat_template": bool(e.chat_template),
            "device": "cuda" if torch.cuda.is_available() else "cpu", "dtype": spec.train.compute_dtype}


def check(spec) -> None:
    """Before a job starts: the task names and folders (BenchmarkError listing every problem)."""
    from studio.evaluate import benchmarks

    tasks = list(spec.eval.benchmarks or spec.train.benchmarks)
    if problems := benchmarks.check_tasks(tasks, spec.eval.benchmark_dirs):
        raise benchmarks.BenchmarkError("benchmarks: " + "\n".join(problems))


def run_benchmarks(spec, entries, tasks, say=print, progress=None) -> dict:
    """Every entry of the plan (objects with name, model, adapter) scored on `tasks`: {"tasks", "models": {name: {task: entry}}, "base", "settings"}.
    Entries with an adapter on the base share one call (one load); a full model folder gets its own."""
    from studio.evaluate import benchmarks

    base = spec.model.name_or_path
    kw = settings(spec)
    adapters = {e.name: str(e.adapter) for e in entries if e.adapter is not None}
    full = [e for e in entries if e.adapter is None and e.model != base]

    def on_progress(done, total, message):
        if progress is not None:
            progress(done, total, message)
        if message != "done":
            say(f"benchmarks: {message} ({done}/{total})")

    first = benchmarks.score(base, adapters, tasks, on_progress=on_progress, **kw)
    base_name = next((e.name for e in entries if e.adapter is None and e.model == base), "base")
    models = {base_name: first["models"]["base"], **{n: first["models"][n] for n in adapters}}
    for e in full:  # a model of its own: scored as a base, then compared with the real one
        models[e.name] = benchmarks.score(e.model, None, tasks, on_progress=on_progress, **kw)["models"]["base"]
        for task, entry in models[e.name].items():
            benchmarks.compare(entry, models[base_name][task])
    return {"tasks": first["tasks"], "base": base_name, "models": models,
            "settings": {k: v for k, v in first["settings"].items() if k != "adapters"}}


def rows(bench: dict) -> list[dict]:
    """One row per model and task, the base first."""
    out = []
    for name, scores in bench["models"].items():
        for task in bench["tasks"]:
            e = scores.get(task)
            if e is not None:
                out.append({"model": name, "task": task, "metric": e["metric"], "value": e["value"], "stderr": e.get("stderr"),
                            "delta": e.get("delta"), "lost": e.get("lost", False), "n": e.get("n"), "cached": e.get("cached")})
    return out


def text_table(bench: dict) -> str:
    """The models x tasks table for the terminal and the job log: value ± stderr, and each run's delta."""
    names = list(bench["models"])
    head = ["task (metric)", *names]
    lines = []
    for task in bench["tasks"]:
        b = bench["models"][bench["base"]].get(task) or {}
        cells = [f"{task} ({b.get('metric', '?')})"]
        for n in names:
            e = bench["models"][n].get(task)
            if e is None:
                cells.append("-")
                continue
            se = f" ± {e['stderr']:.3f}" if isinstance(e.get("stderr"), (int, float)) else ""
            d = f" ({e['delta']:+.3f}{' lost' if e.get('lost') else ''})" if e.get("delta") is not None else ""
            cells.append(f"{e['value']:.3f}{se}{d}")
        lines.append(cells)
    widths = [max(len(r[i]) for r in [head, *lines]) for i in range(len(head))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in [head, *lines])


def write(run_dir: Path, bench: dict) -> Path:
    path = Path(run_dir) / BENCHMARKS
    path.write_text(json.dumps(bench, indent=1, ensure_ascii=False))
    return path


def read(run_dir: Path) -> dict | None:
    try:
        return json.loads((Path(run_dir) / BENCHMARKS).read_text())
    except (OSError, ValueError):
        return None


def after_training(spec, run_dir: Path, say=print) -> dict:
    """train.benchmarks on the finished run (its adapter/ or model/) and its base: RUN/benchmarks.json, and the
    run's value and delta per task for its results ({"bench/<task>": value, "bench/<task>/delta": delta})."""
    from types import SimpleNamespace as Model

    run_dir = Path(run_dir)
    base = spec.model.name_or_path
    if (run_dir / "adapter" / "adapter_config.json").is_file():
        me = Model(name=run_dir.name, model=base, adapter=run_dir / "adapter")
    else:
        me = Model(name=run_dir.name, model=str(run_dir / "model"), adapter=None)
    bench = run_benchmarks(spec, [Model(name="base", model=base, adapter=None), me], list(spec.train.benchmarks), say)
    write(run_dir, bench)
    say(text_table(bench))
    out = {}
    for task, e in bench["models"][me.name].items():
        out[f"bench/{task}"] = round(e["value"], 4)
        if e.get("delta") is not None:
            out[f"bench/{task}/delta"] = round(e["delta"], 4)
    return out
