"""Datasets for the preference and RL stages, as rows in TRL's conversational formats.

    dpo, rm   ranking entries (`ranking: true`, chosen/rejected; alpaca or sharegpt; the Chat tab's saved pairs)
              -> {"prompt": [messages], "chosen": [answer], "rejected": [answer]}
    kto       KTO entries (`columns.kto_tag`: true/false) -> {"prompt", "completion", "label"}; ranking entries are
              split into one good and one bad example per pair
    grpo      prompt-only entries (`columns.reference`: an optional reference answer) or chat entries (the last answer
              is the reference) -> {"prompt": [messages], "reference": str}

TRL's trainers apply the chat template (the tokenizer's, or the spec's built-in one) and mask the prompt.
"""
from __future__ import annotations

from studio.data import convert, readers, registry
from studio.data.registry import DataError
from studio.spec.stages import STAGE_TABLE

WHAT = {
    "ranking": "preference pairs (`ranking: true` with chosen/rejected columns)",
    "kto": "answers labelled good or bad (`columns.kto_tag`)",
    "prompt": "prompts (with `columns.reference` for a reference answer)",
    "chat": "conversations with one answer each (supervised data)",
    "text": "plain text",
}


def usable(e: registry.DatasetEntry, stage: str) -> None:
    """Refuse an entry whose shape the stage cannot train on, naming the entry and what the stage needs."""
    need = STAGE_TABLE[stage].data
    if e.kind in need:
        return
    fits = [s.name for s in STAGE_TABLE.values() if e.kind in s.data]
    hint = " or ".join([", ".join(fits[:-1]), fits[-1]] if len(fits) > 1 else fits)
    raise DataError(f"dataset `{e.name}` holds {WHAT[e.kind]}; stage {stage} needs {' or '.join(WHAT[k] for k in need)}. "
                    f"Use it with method.stage={hint}, or remove it from data.dataset / data.eval_dataset.")


def _content(value, e, col: str) -> str:
    if isinstance(value, dict):
        return str(value.get(e.tag("content_tag"), value.get("content", "")))
    if isinstance(value, list):
        raise convert.RecordError(f"column `{col}` holds a list; expected one answer (text, or a turn object)")
    return "" if value is None else str(value)


def to_prompt(rec: dict, e: registry.DatasetEntry) -> tuple[list[dict], str | None]:
    """A GRPO record: (prompt messages ending with the user's turn, the reference answer or None)."""
    ref_col = e.columns.get("reference")
    if e.formatting == "alpaca":
        rcol = e.column("response") or "output"
        answer = rec.get(rcol)
        msgs = convert._alpaca({**rec, rcol: "" if answer is None else answer}, e)
        prompt, last = msgs[:-1], msgs[-1]["content"]
    else:
        col = e.column("messages")
        turns = rec.get(col)
        if not isinstance(turns, list) or not turns:
            raise convert.RecordError(f"column `{col}` must be a non-empty list of turns")
        ends_user = turns[-1].get(e.tag("role_tag")) in (e.tag("user_tag"), e.tag("observation_tag")) if isinstance(turns[-1], dict) else False
        if ends_user:
            fake = {**rec, col: turns + [{e.tag("role_tag"): e.tag("assistant_tag"), e.tag("content_tag"): ""}]}
            prompt, last = convert._sharegpt(fake, e, col)[:-1], ""
        else:
            msgs = convert._sharegpt(rec, e, col)
            prompt, last = msgs[:-1], msgs[-1]["content"]
    if ref_col:
        if ref_col not in rec:
            raise convert.RecordError(f"missing column `{ref_col}` (columns.reference: the reference answer)")
        return prompt, _content(rec[ref_col], e, ref_col)
    return prompt, last or None


def to_kto(rec: dict, e: registry.DatasetEntry) -> tuple[list[dict], str, bool]:
    col = e.columns["kto_tag"]
    if col not in rec:
        raise convert.RecordError(f"missing column `{col}` (columns.kto_tag: true for a good answer, false for a bad one)")
    label = rec[col]
    if isinstance(label, str) and label.lower() in ("true", "false"):
        label = label.lower() == "true"
    if not isinstance(label, bool):
        raise convert.RecordError(f"column `{col}` must be true or false, got {label!r}")
    msgs = convert.to_messages(rec, e)
    return msgs[:-1], msgs[-1]["content"], label


def rows(e: registry.DatasetEntry, stage: str, records) -> tuple[list[dict], list[str]]:
    """(location, record) pairs -> TRL rows for the stage, and the issues of the bad records."""
    out, issues = [], []
    shape = STAGE_TABLE[stage].rows
    for loc, rec in records:
        try:
            if shape == "prompts":
                prompt, ref = to_prompt(rec, e)
                out.append({"prompt": prompt, "reference": ref or ""})
            elif e.kind == "ranking":
                prompt, chosen, rejected = convert.to_pair(rec, e)
                if not chosen.strip() or not rejected.strip():
                    raise convert.RecordError("the chosen or the rejected answer is empty")
                if shape == "labelled":
                    out += [{"prompt": prompt, "completion": [{"role": "assistant", "content": a}], "label": good}
                            for a, good in ((chosen, True), (rejected, False))]
                else:
                    out.append({"prompt": prompt, "chosen": [{"role": "assistant", "content": chosen}],
                                "rejected": [{"role": "assistant", "content": rejected}]})
            else:
                prompt, answer, label = to_kto(rec, e)
                out.append({"prompt": prompt, "completion": [{"role": "assistant", "content": answer}], "label": label})
        except convert.RecordError as err:
            issues.append(f"{loc}: {err}")
    return out, issues


def read(dataset_dir, names: list[str], stage: str, max_samples=None, info: dict | None = None) -> list[dict]:
    info = registry.read_info(dataset_dir) if info is None else info
    all_rows, issues = [], []
    for n in names:
        e = registry.entry(dataset_dir, n, info)
        usable(e, stage)
        records, iss = readers.read_entry(e)
        limit = min(x for x in (max_samples, e.num_samples) if x) if (max_samples or e.num_samples) else None
        r, bad = rows(e, stage, records[:limit] if limit else records)
        all_rows += r
        issues += iss + bad
    if issues:
        raise DataError(f"{len(issues)} bad record(s) in {', '.join(names)}; fix them (or remove them) and try again:", issues)
    if not all_rows:
        raise DataError(f"no examples in {', '.join(names)}")
    return all_rows


def build(spec):
    """-> (train Dataset, eval Dataset or None, summary text) for a preference or RL stage."""
    import datasets

    d, st = spec.data, spec.method.stage
    train = datasets.Dataset.from_list(read(d.dataset_dir, list(d.dataset), st, d.max_samples))
    evals = None
    if d.eval_dataset:
        evals = datasets.Dataset.from_list(read(d.dataset_dir, list(d.eval_dataset), st, d.max_samples))
    elif d.val_size > 0:
        size = d.val_size if d.val_size < 1 else int(d.val_size)
        if (isinstance(size, int) and size >= len(train)) or len(train) < 2:
            raise DataError(f"data.val_size={d.val_size} leaves no training examples (only {len(train)}); lower it")
        split = train.train_test_split(test_size=size, seed=spec.train.seed)
        train, evals = split["train"], split["test"]
    if d.seed_shuffle:
        train = train.shuffle(seed=spec.train.seed)
    shape = STAGE_TABLE[st].rows
    what = "labelled answers" if shape == "labelled" else shape
    note = f"data: {len(train)} {what}" + (f", {len(evals)} held out" if evals is not None else "")
    if shape == "labelled":
        good = sum(train["label"])
        note += f" ({good} good, {len(train) - good} bad)"
    return train, evals, note


def fitting(dataset_dir, stage: str) -> list[str]:
    """The registered datasets whose shape the stage can train on (for the page's dataset lists): of a broken
    dataset_info.json, the entries that can be read (the page names the problems above the lists)."""
    from studio.data import registry_scan

    info, _ = registry_scan.scan(dataset_dir)
    ok = STAGE_TABLE[stage].data
    out = []
    for n in info:
        try:
            e = registry.entry(dataset_dir, n, info)
        except DataError:
            continue
        if e.kind in ok and not (stage == "pt" and e.kind == "chat" and e.formatting != "alpaca"):
            out.append(n)
    return out


def preview(spec, limit: int = 100, info: dict | None = None) -> dict:
    """The Dataset preview of a preference or RL stage: each pair as its chosen and its rejected answer (each answer's
    tokens marked as trained), KTO answers with their label, GRPO prompts with the reference answer."""
    from studio.model import models
    from studio.data.templates import Template

    d, st = spec.data, spec.method.stage
    tokenizer = models.load_tokenizer(spec.model.name_or_path, spec.model.trust_remote_code)
    template = Template(spec.model.template, tokenizer)
    full_info = {**registry.read_info(d.dataset_dir), **(info or {})}
    rows = read(d.dataset_dir, list(d.dataset), st, d.max_samples, full_info)
    shown, tokens, trained = [], 0, 0
    for i, r in enumerate(rows):
        if STAGE_TABLE[st].rows == "prompts":
            answers = [("prompt; reference: " + (r["reference"] or "none"), None)]
        elif "chosen" in r:
            answers = [("chosen", r["chosen"][0]["content"]), ("rejected", r["rejected"][0]["content"])]
        else:
            answers = [("good" if r["label"] else "bad", r["completion"][0]["content"])]
        for what, answer in answers:
            msgs = r["prompt"] + [{"role": "assistant", "content": answer or ""}]
            segs = template.segments(msgs)
            if answer is None:
                segs = [(t, False) for t, _ in segs[:-1]] if len(segs) > 1 else segs
            n = [len(tokenizer.encode(t, add_special_tokens=False)) for t, _ in segs]
            tokens += sum(n)
            trained += sum(k for k, (_, f) in zip(n, segs) if f)
            if len(shown) < limit:
                shown.append({"loc": f"example {i} ({what})", "dataset": ", ".join(d.dataset), "tokens": sum(n),
                              "trained": sum(k for k, (_, f) in zip(n, segs) if f), "truncated": sum(n) > d.cutoff_len,
                              "pieces": [[t, bool(f)] for t, f in segs]})
    return {"stats": {"records": len(rows), "examples": len(rows), "tokens": tokens, "trained_tokens": trained, "truncated": 0,
                      "dropped": 0}, "examples": shown, "issues": [], "num_issues": 0, "template": template.name}
