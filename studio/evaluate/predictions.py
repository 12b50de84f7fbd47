"""Evaluation data: prompts with their reference answers in, predictions files and scores out (no torch here).

    samples = read_samples(spec)            # Sample(dataset, loc, messages ending with a user turn, label or None)
    mean, note = score_rows(rows)           # per-sample BLEU/ROUGE added to {"predict", "label"} rows; their mean
    score_file("runs/x/predictions.jsonl")  # what `studio eval score` prints
    load_results("runs/x"); history("runs/my_lora")   # metrics.json of an eval run; evals.jsonl of a trained run
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from studio.evaluate import metrics as metricsmod

HISTORY = "evals.jsonl"
METRICS = "metrics.json"


@dataclass
class Sample:
    dataset: str
    loc: str
    messages: list  # the conversation up to the answer to predict (ends with a user turn)
    label: str | None  # the reference answer (last assistant turn), None when the data has none


def eval_datasets(spec) -> list[str]:
    """The datasets predicted on: data.eval_dataset, else (when no benchmarks are asked for) data.dataset."""
    return list(spec.data.eval_dataset or ([] if spec.eval.benchmarks else spec.data.dataset))


def read_samples(spec) -> list[Sample]:
    """Prompts and references of the eval datasets; a record without an answer becomes a prompt to predict."""
    from studio.data import convert, readers, registry
    from studio.data.encode import usable

    d = spec.data
    info = registry.read_info(d.dataset_dir)
    out, issues = [], []
    for name in eval_datasets(spec):
        e = registry.entry(d.dataset_dir, name, info)
        usable(e, "sft")
        records, iss = readers.read_entry(e)
        issues += iss
        limit = min(x for x in (d.max_samples, e.num_samples) if x) if (d.max_samples or e.num_samples) else None
        for loc, rec in records[:limit]:
            try:
                messages, label = _split(rec, e, convert)
            except convert.RecordError as err:
                issues.append(f"{loc}: {err}")
                continue
            out.append(Sample(name, loc, messages, label))
    if issues:
        raise registry.DataError(f"{len(issues)} bad record(s) in {', '.join(eval_datasets(spec))}; fix or remove them:", issues)
    if not out:
        raise registry.DataError(f"no samples in {', '.join(eval_datasets(spec))}")
    return out


def _split(rec: dict, e, convert) -> tuple[list, str | None]:
    if e.formatting == "alpaca":
        rcol = e.column("response")
        if rcol and rec.get(rcol) is None:
            rec = {**rec, rcol: ""}
    else:
        col, rt, ct = e.column("messages"), e.tag("role_tag"), e.tag("content_tag")
        turns = rec.get(col)
        if isinstance(turns, list) and turns and isinstance(turns[-1], dict) and turns[-1].get(rt) != e.tag("assistant_tag"):
            rec = {**rec, col: turns + [{rt: e.tag("assistant_tag"), ct: ""}]}
    messages = convert.to_messages(rec, e)
    label = messages[-1]["content"]
    return messages[:-1], (label if label.strip() else None)


def score_rows(rows: list[dict]) -> tuple[dict, str]:
    """Add per-sample scores to prediction rows (those with a label); -> (mean metrics, note)."""
    scored = []
    for r in rows:
        if r.get("label") is None:
            continue
        r.update(metricsmod.score(r.get("predict"), r["label"]))
        scored.append(r)
    note = ""
    if not scored:
        note = "no reference answers in the data: predictions only, no BLEU/ROUGE"
    elif len(scored) < len(rows):
        note = f"{len(rows) - len(scored)} of {len(rows)} samples have no reference answer; metrics cover the other {len(scored)}"
    return metricsmod.mean(scored), note


def score_file(path: str | Path) -> dict:
    """`studio eval score`: metrics of an existing predictions.jsonl ({"predict", "label"} per line)."""
    from studio.data.registry import DataError

    rows = []
    for n, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{path}:{n}: not valid JSON ({e.msg})") from None
        if not isinstance(row, dict) or "predict" not in row:
            raise DataError(f"{path}:{n}: expected an object with `predict` and `label`")
        rows.append(row)
    if not rows:
        raise DataError(f"{path}: no predictions in the file")
    mean, note = score_rows(rows)
    return {"samples": len(rows), "scored": sum(r.get("label") is not None for r in rows), **mean, **({"note": note} if note else {})}


def write_jsonl(path: Path, rows: list[dict]) -> None:
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    tmp.replace(path)


def table(results: list[dict]) -> str:
    keys = [k for k in (*metricsmod.KEYS, "eval_loss", "perplexity", "samples_per_second") if any(k in r for r in results)]
    width = max(len(r["name"]) for r in results) + 2
    lines = ["model".ljust(width) + "".join(f"{k:>20}" for k in keys)]
    for r in results:
        lines.append(r["name"].ljust(width) + "".join(f"{r[k]:>20.4f}" if k in r else f"{'':>20}" for k in keys))
    return "\n".join(lines)




def load_results(run_dir: str | Path) -> dict | None:
    """metrics.json of an eval run, or None before it is written."""
    try:
        return json.loads((Path(run_dir) / METRICS).read_text())
    except (OSError, json.JSONDecodeError):
        return None


def history(run_dir: str | Path) -> list[dict]:
    """The evaluations of a training run, oldest first."""
    out = []
    try:
        for line in (Path(run_dir) / HISTORY).read_text(encoding="utf-8").splitlines():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    except OSError:
        pass
    return out
