"""Evaluation entry point: batched generation over datasets -> predictions.jsonl, metrics.json.

    python -m studio.evaluate.job runs/eval_identity          (what `studio eval SPEC` starts in the background)

plan (base model, adapters or run folders to compare) -> samples (prompt messages + reference answer) ->
for each model: load -> generate in length-sorted, left-padded batches until the template's end of turn
-> loss on the references -> score -> write. SIGTERM or SIGINT ends the job with `aborted`.

A run folder evaluated here keeps a line per evaluation in RUN/evals.jsonl (metrics + this eval's folder),
shown by `studio runs`.
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

from studio.run import events as ev
from studio.run import job
from studio.evaluate import metrics as metricsmod
from studio import spec as specmod
from studio.model.source import Resolved, check_base, resolve_spec
from studio.evaluate.batchgen import halve_on_oom
from studio.evaluate.loading import load, prompt_ids  # noqa: F401  (also the names callers use)
from studio.evaluate.predictions import HISTORY, METRICS, Sample, eval_datasets, read_samples, score_rows, table, write_jsonl


@dataclass
class Entry(Resolved):
    """One model to evaluate (studio.model.source.Resolved): the base (adapter None), an adapter on it, or a fully
    trained model folder; `run`, the training run folder, keeps the evaluation history."""
    predictions: str = "predictions.jsonl"


# --- what to evaluate ---------------------------------------------------------------------------------


def plan(spec) -> list[Entry]:
    """The models of an eval spec: model.adapter (or the base), then eval.compare; `base` first when compared. Each
    is resolved on model.name_or_path (source.resolve_spec); one trained on another base is refused, a whole model
    too, so that the models compared share one base."""
    for name in ("batch_size", "max_new_tokens"):
        if getattr(spec.eval, name) < 1:
            raise specmod.SpecError(f"eval.{name}: must be at least 1")
    targets = [spec.model.adapter or "base"] + [c for c in spec.eval.compare if c]
    if "base" in targets:
        targets = ["base"] + [t for t in targets if t != "base"]
    entries, seen = [], set()
    for t in dict.fromkeys(targets):
        e = Entry(**vars(resolve_spec(spec.model, t)))
        if t != "base" and e.adapter is None:
            check_base(t, e.trained_on, spec.model.name_or_path)
        name, i = e.name, 2
        while name in seen:
            name, i = f"{e.name}-{i}", i + 1
        e.name = name
        seen.add(name)
        entries.append(e)
    if len(entries) > 1:
        for e in entries:
            e.predictions = f"predictions-{e.name}.jsonl"
    return entries


# --- the model at work -------------------------------------------------------------------------------


def batched(order: list[int], batch_size: int, step, say):
    """Call step(indices) on batches of `order`; on out-of-memory halve the batch and go on. Yields samples done."""
    done, bs = 0, batch_size
    while done < len(order):
        idx = order[done:done + bs]
        try:
            step(idx)
        except Exception as e:
            bs = halve_on_oom(e, bs, say)
            continue
        done += len(idx)
        yield done


def generate(model, tokenizer, template, prompts: list[list[int]], ecfg, say=print, progress=None) -> tuple[list[str], int]:
    """Predictions for token-id prompts, in their order, and the number of tokens generated (studio.evaluate.batchgen)."""
    from studio.evaluate.batchgen import generate as batched_generate

    return batched_generate(model, tokenizer, template, prompts, ecfg, say, progress)


def label_loss(model, template, samples: list[Sample], batch_size: int, cutoff_len: int, say=print) -> float | None:
    """Mean token cross-entropy of the reference answers given their prompts (the last answer only)."""
    import torch

    from studio.data.encode import IGNORE, encode_chat

    rows = [encode_chat(s.messages + [{"role": "assistant", "content": s.label}], template, cutoff_len, mask_history=True)[:2]
            for s in samples if s.label is not None]
    rows = [r for r in rows if any(x != IGNORE for x in r[1][1:])]
    if not rows:
        return None
    device = next(model.parameters()).device
    pad = template.tokenizer.pad_token_id or 0
    total = [0.0, 0]

    def step(idx):
        width = max(len(rows[i][0]) for i in idx)
        ids = torch.tensor([rows[i][0] + [pad] * (width - len(rows[i][0])) for i in idx], device=device)
        lab = torch.tensor([rows[i][1] + [IGNORE] * (width - len(rows[i][1])) for i in idx], device=device)
        mask = torch.tensor([[1] * len(rows[i][0]) + [0] * (width - len(rows[i][0])) for i in idx], device=device)
        with torch.no_grad():
            loss = model(input_ids=ids, attention_mask=mask, labels=lab).loss
        n = int((lab[:, 1:] != IGNORE).sum())
        total[0] += float(loss) * n
        total[1] += n

    order = sorted(range(len(rows)), key=lambda i: -len(rows[i][0]))
    for _ in batched(order, batch_size, step, say):
        pass
    return total[0] / total[1]


# --- the job -------------------------------------------------------------------------------------------


def evaluate_one(spec, entry: Entry, samples: list[Sample], run_dir: Path, say, progress) -> dict:
    from transformers import set_seed

    from studio.data.templates import Template

    t0 = time.time()
    model, tokenizer = load(spec, entry)
    template = Template(entry.template, tokenizer)
    say(f"{entry.name}: model loaded in {time.time() - t0:.1f}s" + (f" (adapter {entry.adapter})" if entry.adapter else ""))
    prompts = [prompt_ids(s.messages, template, spec.data.cutoff_len) for s in samples]
    set_seed(spec.eval.seed)
    t1 = time.time()
    preds, n_tokens = generate(model, tokenizer, template, prompts, spec.eval, say, progress)
    gen_s = time.time() - t1
    rows = [{"prompt": template.prompt(s.messages), "query": s.messages[-1]["content"], "predict": p, "label": s.label,
             "dataset": s.dataset} for s, p in zip(samples, preds)]
    mean, note = score_rows(rows)
    out = {"name": entry.name, "adapter": str(entry.adapter) if entry.adapter else None, "model": entry.model,
           "predictions": entry.predictions, "samples": len(samples), "scored": sum(s.label is not None for s in samples), **mean}
    if spec.eval.compute_loss:
        loss = label_loss(model, template, samples, spec.eval.batch_size, spec.data.cutoff_len, say)
        if loss is not None:
            out.update(eval_loss=round(loss, 4), perplexity=round(math.exp(min(loss, 50)), 4))
    out.update(samples_per_second=round(len(samples) / gen_s, 3), generated_tokens=n_tokens,
               generated_tokens_per_second=round(n_tokens / gen_s, 1), generation_s=round(gen_s, 2))
    if note:
        out["note"] = note
    write_jsonl(run_dir / entry.predictions, rows)
    del model
    return out


def record_history(entry: Entry, result: dict, run_dir: Path, datasets: list[str], others: list[str]) -> None:
    if entry.run is None or entry.run.resolve() == run_dir.resolve():
        return
    line = {"t": round(time.time(), 3), "eval_run": str(run_dir.resolve()), "datasets": datasets, "compared_with": others,
            **{k: result[k] for k in ("samples", *metricsmod.KEYS, "eval_loss", "perplexity") if k in result}}
    with open(entry.run / HISTORY, "a", encoding="utf-8") as f:
        f.write(json.dumps(line, ensure_ascii=False) + "\n")


def run_pairs(spec, run_dir: Path, writer: ev.EventWriter) -> dict:
    """Preference pairs: one row per model, the base first (prefscore.rows): the share of pairs each prefers the chosen
    answer of, and for each dpo/kto run its implicit reward margins against the base; for a reward model, its accuracy.
    Progress counts pairs."""
    from studio.data import preference
    from studio.evaluate import prefscore

    entries = prefscore.pair_runs(spec, plan(spec))
    pairs = preference.read(spec.data.dataset_dir, eval_datasets(spec), "dpo")
    total = len(pairs) * len(entries)
    writer.write("start", task="eval", total_steps=total, num_examples=len(pairs), unit="pairs",
                 models=[e.name for e in entries], datasets=eval_datasets(spec))
    results: list[dict] = []
    for k, entry in enumerate(entries):
        base_done, t0 = k * len(pairs), time.time()

        def progress(done, base_done=base_done, t0=t0, name=entry.name):
            rate = done / max(time.time() - t0, 1e-9)
            writer.write("progress", done=base_done + done, total=total, rate=round(rate, 3),
                         eta_s=round((total - base_done - done) / rate, 1), unit="pairs", model=name)

        scores = prefscore.score_run(entry.run, rows=pairs, progress=progress)
        for row in prefscore.rows(entry.name, scores):
            if row["name"] == "base" and any(r["name"] == "base" for r in results):
                continue  # one base row: every run is scored against the same base
            results.append({"name": row["name"], "adapter": str(entry.adapter) if row["name"] != "base" else None,
                            "model": entry.model, "predictions": None, **row})
    results.sort(key=lambda r: r["name"] != "base")
    (run_dir / METRICS).write_text(json.dumps({"models": results, "datasets": eval_datasets(spec), "pairs": True}, indent=2))
    for r in results:
        writer.write("message", text=f"{r['name']}: " + ", ".join(f"{key} {r[key]}" for key in prefscore.KEYS if key in r))
    return {"step": total, "metrics": {r["name"]: {key: r[key] for key in prefscore.KEYS if key in r} for r in results},
            "path": str(run_dir / METRICS)}


def run(spec, run_dir: Path, writer: ev.EventWriter) -> dict:
    """Predictions on the eval datasets (or the pair scores of preference runs), then the benchmarks, then the judge."""
    import torch

    from studio.evaluate import prefscore

    if spec.train.num_threads:
        torch.set_num_threads(spec.train.num_threads)
    say = lambda text: writer.write("message", text=text)  # noqa: E731
    entries = plan(spec)
    if prefscore.is_pair_eval(spec):
        out, results = run_pairs(spec, run_dir, writer), []
    elif eval_datasets(spec):
        out, results = run_predictions(spec, entries, run_dir, writer, say)
    else:
        writer.write("start", task="eval", total_steps=0, num_examples=0, models=[e.name for e in entries], datasets=[])
        out, results = {"step": 0, "metrics": {}}, []
    if spec.eval.benchmarks:
        out = {**out, **benchmark_step(spec, entries, run_dir, writer, say)}
    if spec.eval.judge != "none":
        from studio.evaluate import judging

        out = {**out, **judging.judge_step(spec, entries, results, run_dir, writer, say)}
    return out


def benchmark_step(spec, entries, run_dir: Path, writer: ev.EventWriter, say) -> dict:
    from studio.evaluate import scorecard

    def progress(done, total, message):
        writer.write("progress", done=done, total=total, unit="benchmark tasks", model=message.split(":")[0])

    bench = scorecard.run_benchmarks(spec, entries, list(spec.eval.benchmarks), say, progress)
    path = scorecard.write(run_dir, bench)
    say(scorecard.text_table(bench))
    lost = [f"{r['model']} on {r['task']} ({r['delta']:+.3f})" for r in scorecard.rows(bench) if r["lost"]]
    if lost:
        say("lost more than the standard error: " + "; ".join(lost))
    return {"benchmarks": {name: {t: round(e["value"], 4) for t, e in scores.items()} for name, scores in bench["models"].items()},
            "benchmarks_path": str(path)}


def run_predictions(spec, entries, run_dir: Path, writer: ev.EventWriter, say) -> tuple[dict, list[dict]]:
    samples = read_samples(spec)
    total = len(samples) * len(entries)
    writer.write("start", task="eval", total_steps=total, num_examples=len(samples), models=[e.name for e in entries],
                 datasets=eval_datasets(spec))
    results = []
    for k, entry in enumerate(entries):
        base_done, t0 = k * len(samples), time.time()

        def progress(done, base_done=base_done, t0=t0, name=entry.name):
            rate = done / max(time.time() - t0, 1e-9)
            writer.write("progress", done=base_done + done, total=total, rate=round(rate, 3),
                         eta_s=round((total - base_done - done) / rate, 1), unit="samples", model=name)

        results.append(evaluate_one(spec, entry, samples, run_dir, say, progress))
    names = [r["name"] for r in results]
    for entry, r in zip(entries, results):
        record_history(entry, r, run_dir, eval_datasets(spec), [n for n in names if n != r["name"]])
    summary = {"models": results, "datasets": eval_datasets(spec)}
    if len(results) == 1:
        summary.update({k: v for k, v in results[0].items() if k not in ("name", "predictions")})
    (run_dir / METRICS).write_text(json.dumps(summary, indent=2, ensure_ascii=False))
    say(table(results))
    for r in results:
        if r.get("note"):
            say(f"{r['name']}: {r['note']}")
    short = {r["name"]: {k: r[k] for k in (*metricsmod.KEYS, "eval_loss") if k in r} for r in results}
    return {"step": total, "metrics": short, "path": str(run_dir / METRICS)}, results


def body(spec, run_dir: Path, writer: ev.EventWriter):
    return "done", run(spec, run_dir, writer)


def main(argv: list[str] | None = None) -> int:
    return job.main(body, __doc__, argv, step_from_progress=True)


if __name__ == "__main__":
    raise SystemExit(main())
