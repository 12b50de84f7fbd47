"""Held-out preference pairs scored by a model: which answer it prefers, base vs trained.

    python -m studio.evaluate.prefscore RUN_DIR [DATASET ...]     # default: the run's data.eval_dataset

For each pair (prompt, chosen, rejected) the summed log-probability of each answer given the prompt is computed with
the adapter and with it disabled (the base). `score_pairs` reports the shares:
  base_prefers_chosen     log p_base(chosen) > log p_base(rejected)
  trained_prefers_chosen  log p(chosen) > log p(rejected)
  margin_positive         the DPO implicit reward margin > 0: (log p - log p_base)(chosen) - (same)(rejected) > 0
An evaluation writes them as one row per model (`rows`): the base with its prefers_chosen, each run with its own and
its margins against the base (COLUMNS says what each column means). A run can raise the chosen answer against the
rejected one on every pair (margin_positive 1) and still give the rejected one the higher log-probability on some
(prefers_chosen below 1): the margin measures the change from the base, not where the run ends.
A reward model (stage rm) is scored by its reward: accuracy = share of pairs with r(chosen) > r(rejected).
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

from studio.spec.stages import STAGE_TABLE


def _ids(tokenizer, prompt: list[dict], answer: str) -> tuple[list[int], int]:
    p = tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=False)
    full = tokenizer.apply_chat_template(prompt + [{"role": "assistant", "content": answer}], tokenize=False)
    if not full.startswith(p):
        full = p + answer + (tokenizer.eos_token or "")
    p_ids = tokenizer(p, add_special_tokens=False)["input_ids"]
    ids = tokenizer(full, add_special_tokens=False)["input_ids"]
    return ids, len(p_ids)


def answer_logp(model, tokenizer, prompt, answer) -> float:
    import torch

    ids, n_prompt = _ids(tokenizer, prompt, answer)
    x = torch.tensor([ids])
    with torch.no_grad():
        logits = model(input_ids=x).logits[0, :-1].float()
    logp = torch.log_softmax(logits, -1).gather(-1, x[0, 1:, None])[:, 0]
    return float(logp[n_prompt - 1:].sum())


def score_pairs(model, tokenizer, rows: list[dict], progress=None) -> dict:
    """rows: {"prompt", "chosen", "rejected"} in TRL's conversational form. `model` is a PeftModel (base = adapter off).
    progress(pairs done), after each pair."""
    base_wins = trained_wins = margin_pos = 0
    margins = []
    for i, r in enumerate(rows):
        c, j = r["chosen"][0]["content"], r["rejected"][0]["content"]
        pc, pj = answer_logp(model, tokenizer, r["prompt"], c), answer_logp(model, tokenizer, r["prompt"], j)
        with model.disable_adapter():
            bc, bj = answer_logp(model, tokenizer, r["prompt"], c), answer_logp(model, tokenizer, r["prompt"], j)
        base_wins += bc > bj
        trained_wins += pc > pj
        m = (pc - bc) - (pj - bj)
        margins.append(m)
        margin_pos += m > 0
        if progress:
            progress(i + 1)
    n = max(len(rows), 1)
    return {"pairs": len(rows), "base_prefers_chosen": base_wins / n, "trained_prefers_chosen": trained_wins / n,
            "margin_positive": margin_pos / n, "mean_margin": sum(margins) / n}


def score_rm(model, tokenizer, rows: list[dict], progress=None) -> dict:
    import torch

    wins = 0
    for i, r in enumerate(rows):
        scores = []
        for key in ("chosen", "rejected"):
            text = tokenizer.apply_chat_template(r["prompt"] + r[key], tokenize=False)
            with torch.no_grad():
                scores.append(float(model(**tokenizer(text, return_tensors="pt", add_special_tokens=False)).logits[0, 0]))
        wins += scores[0] > scores[1]
        if progress:
            progress(i + 1)
    return {"pairs": len(rows), "accuracy": wins / max(len(rows), 1)}


def score_run(run_dir: str | Path, names: list[str] | None = None, dataset_dir: str | None = None, rows=None,
              progress=None) -> dict:
    """Load a dpo/kto/rm run's adapter on its base and score the held-out pairs (`rows`, else read from the run's own
    data folder and eval datasets unless given); progress(pairs done)."""
    import peft

    from studio.model import models
    from studio import spec as specmod
    from studio.data import preference

    run_dir = Path(run_dir)
    spec = specmod.load(run_dir / "spec.yaml")
    names = names or list(spec.data.eval_dataset)
    if rows is None:
        rows = preference.read(dataset_dir or spec.data.dataset_dir, names, "dpo")
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(run_dir / "adapter"))  # saved with the template it trained with
    if spec.method.stage == "rm":
        from transformers import AutoModelForSequenceClassification

        base = AutoModelForSequenceClassification.from_pretrained(models.resolve(spec.model.name_or_path), num_labels=1)
        base.config.pad_token_id = tok.pad_token_id
        model = peft.PeftModel.from_pretrained(base, str(run_dir / "adapter")).eval()
        return score_rm(model, tok, rows, progress)
    base = models.load_model(spec.model, "fp32")
    model = peft.PeftModel.from_pretrained(base, str(run_dir / "adapter")).eval()
    return score_pairs(model, tok, rows, progress)


STAGES = tuple(n for n, s in STAGE_TABLE.items() if "ranking" in s.data)  # runs scored on held-out pairs
COLUMNS = {  # the columns of a pair evaluation's rows, one per model, as the page explains them
    "pairs": "held-out preference pairs scored",
    "prefers_chosen": "share of pairs where this model gives the chosen answer the higher log-probability",
    "margin_positive": "share of pairs where the run raised the chosen answer against the rejected one, compared with "
                       "the base (DPO's implicit reward margin > 0); the base row has none: it is the reference",
    "mean_margin": "mean of that margin, in log-probability (summed over the answer's tokens)",
    "accuracy": "reward model: share of pairs whose chosen answer gets the higher reward",
}
KEYS = tuple(COLUMNS)


def rows(name: str, scores: dict) -> list[dict]:
    """score_pairs / score_rm of one run -> its rows: the base's (when it was scored) and the run's own."""
    r = lambda v: round(v, 4) if isinstance(v, float) else v  # noqa: E731
    if "accuracy" in scores:
        return [{"name": name, "pairs": scores["pairs"], "accuracy": r(scores["accuracy"])}]
    return [{"name": "base", "pairs": scores["pairs"], "prefers_chosen": r(scores["base_prefers_chosen"])},
            {"name": name, "pairs": scores["pairs"], "prefers_chosen": r(scores["trained_prefers_chosen"]),
             "margin_positive": r(scores["margin_positive"]), "mean_margin": r(scores["mean_margin"])}]


def is_pair_eval(spec) -> bool:
    """An evaluation whose datasets are all preference pairs: scored by which answer each model prefers."""
    from studio.data import registry
    from studio.evaluate.predictions import eval_datasets

    info = registry.read_info(spec.data.dataset_dir)
    names = eval_datasets(spec)
    return bool(names) and all(registry.entry(spec.data.dataset_dir, n, info).kind == "ranking" for n in names)


def pair_runs(spec, entries) -> list:
    """The compared models that pairs can score (runs of a preference stage); refuses an evaluation with none."""
    from studio.run.status import read_spec

    found = [e for e in entries if e.run is not None and (rs := read_spec(e.run)) and rs.method.stage in STAGES]
    if not found:
        from studio.spec import SpecError

        raise SpecError("data.eval_dataset holds preference pairs: they score runs of stage dpo, kto or rm (each against "
                        "its base). Choose such a run as model.adapter or in eval.compare, or evaluate on an SFT dataset.")
    return found


if __name__ == "__main__":
    if len(sys.argv) < 2:
        print(__doc__)
        raise SystemExit(2)
    print(json.dumps(score_run(sys.argv[1], sys.argv[2:] or None), indent=1))
