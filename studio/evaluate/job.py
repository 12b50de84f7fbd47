"""Evaluation entry point: batched generation over datasets -> predictions.jsonl, metrics.json.

    python -m studio.evaluate.job runs/eval_identity          (what `studio eval SPEC` starts in the background)

plan (base model, adapters or run folders to compare) -> samples (prompt messages + reference answer) ->
for each model: load -> generate in length-sorted, left-padded batches until the template's end of turn
-> loss on the references -> score -> write. SIGTERM or SIGINT ends the job with `aborted`.

A run folder evaluated here keeps a line per evaluation in RUN/evals.jsonl (metrics + this eval's folder),
shown by `studio runs`.
"""
from __future__ import annotations

import dataclasses
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

from studio.run import events as ev
from studio.run import job
from studio.run.status import read_spec
from studio.evaluate import metrics as metricsmod
from studio import spec as specmod
from studio.evaluate.batchgen import halve_on_oom
from studio.evaluate.predictions import HISTORY, METRICS, Sample, eval_datasets, read_samples, score_rows, table, write_jsonl


@dataclass
class Entry:
    """One model to evaluate: the base (adapter None), an adapter on it, or a fully trained model folder."""
    name: str
    model: str  # base model name/path, or a full fine-tune's model/ folder
    adapter: Path | None = None
    template: str = "auto"
    run: Path | None = None  # the training run folder, which keeps the evaluation history
    predictions: str = "predictions.jsonl"


# --- what to evaluate ---------------------------------------------------------------------------------


def resolve(target: str, spec) -> Entry:
    """An adapter folder, run folder or checkpoint -> Entry; refuses one trained on another base model."""
    from studio.model import models

    base = spec.model.name_or_path
    if target == "base":
        return Entry("base", base, template=spec.model.template)
    p = Path(target)
    if (p / "model" / "config.json").exists():  # a full or freeze run
        folder, adapter = p / "model", None
    else:
        folder = adapter = models.find_adapter(p)
    rs = read_spec(folder)
    trained_on = (rs.model.name_or_path if rs else None) or models.adapter_base(folder)
    if trained_on and not models.same_base(trained_on, base):
        raise models.ModelError(f"{target} was trained on base model `{trained_on}`, but this evaluation uses `{base}`. "
                                f"Set model.name_or_path={trained_on}, or choose an adapter trained on `{base}`.")
    template = spec.model.template
    if template == "auto":
        template = rs.model.template if rs else "auto"
    run = folder.parent if (folder.parent / "spec.yaml").exists() else (folder if (folder / "spec.yaml").exists() else None)
    name = run.name if run else folder.name
    if run and folder.name.startswith("checkpoint-"):
        name = f"{run.name}-{folder.name}"
    return Entry(name, str(folder) if adapter is None else base, adapter, template, run)


def plan(spec) -> list[Entry]:
    """The models of an eval spec: model.adapter (or the base), then eval.compare; `base` first when compared."""
    for name in ("batch_size", "max_new_tokens"):
        if getattr(spec.eval, name) < 1:
            raise specmod.SpecError(f"eval.{name}: must be at least 1")
    targets = [spec.model.adapter or "base"] + [c for c in spec.eval.compare if c]
    if "base" in targets:
        targets = ["base"] + [t for t in targets if t != "base"]
    entries, seen = [], set()
    for t in dict.fromkeys(targets):
        e = resolve(t, spec)
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


def prompt_ids(messages: list, template, cutoff_len: int) -> list[int]:
    """Token ids of the prompt exactly as training tokenized it (segment by segment), left-cut to cutoff_len."""
    from studio.data.encode import encode_chat

    ids, labels, _ = encode_chat(messages + [{"role": "assistant", "content": ""}], template, 10 ** 9)
    start = next((i for i, x in enumerate(labels) if x != -100), len(ids))
    return ids[:start][-cutoff_len:]


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


def load(spec, entry: Entry):
    import torch

    from studio.model import models

    mspec = dataclasses.replace(spec.model, name_or_path=entry.model, adapter=None)
    model = models.load_model(mspec, spec.train.compute_dtype)
    if entry.adapter is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(entry.adapter))
    if not spec.model.quantization_bit and torch.cuda.is_available():
        model.to("cuda")
    model.eval()
    tokenizer = models.load_tokenizer(entry.model, spec.model.trust_remote_code)
    return model, tokenizer


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
    """Preference pairs: for each dpo/kto run the share of pairs it prefers the chosen answer of, next to its base
    (and the implicit reward margin); for a reward model, its accuracy."""
    from studio.evaluate import prefscore

    entries = prefscore.pair_runs(spec, plan(spec))
    writer.write("start", task="eval", total_steps=len(entries), num_examples=None, models=[e.name for e in entries],
                 datasets=eval_datasets(spec))
    results = []
    for k, entry in enumerate(entries):
        scores = prefscore.score_run(entry.run, eval_datasets(spec), spec.data.dataset_dir)
        results.append({"name": entry.name, "adapter": str(entry.adapter), "model": entry.model, "predictions": None,
                        **{key: round(v, 4) if isinstance(v, float) else v for key, v in scores.items()}})
        writer.write("progress", done=k + 1, total=len(entries), unit="models", model=entry.name)
    (run_dir / METRICS).write_text(json.dumps({"models": results, "datasets": eval_datasets(spec), "pairs": True}, indent=2))
    for r in results:
        writer.write("message", text=f"{r['name']}: " + ", ".join(f"{key} {r[key]}" for key in prefscore.KEYS if key in r))
    return {"step": len(entries), "metrics": {r["name"]: {key: r[key] for key in prefscore.KEYS if key in r} for r in results},
            "path": str(run_dir / METRICS)}


def run(spec, run_dir: Path, writer: ev.EventWriter) -> dict:
    import torch

    from studio.evaluate import prefscore

    if spec.train.num_threads:
        torch.set_num_threads(spec.train.num_threads)
    if prefscore.is_pair_eval(spec):
        return run_pairs(spec, run_dir, writer)
    entries = plan(spec)
    samples = read_samples(spec)
    total = len(samples) * len(entries)
    writer.write("start", task="eval", total_steps=total, num_examples=len(samples), models=[e.name for e in entries],
                 datasets=eval_datasets(spec))
    say = lambda text: writer.write("message", text=text)  # noqa: E731
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
    return {"step": total, "metrics": short, "path": str(run_dir / METRICS)}


def body(spec, run_dir: Path, writer: ev.EventWriter):
    return "done", run(spec, run_dir, writer)


def main(argv: list[str] | None = None) -> int:
    return job.main(body, __doc__, argv, step_from_progress=True)


if __name__ == "__main__":
    raise SystemExit(main())
