"""Datasets -> token ids and labels (-100 where no loss), with a report of what happened on the way.

    train, evals, report = build(spec, tokenizer)

sft: each conversation is rendered by the template; answers carry the loss (all tokens with
`train_on_prompt`, the last answer only with `mask_history`); examples longer than `cutoff_len` are cut
at the end, and dropped if no trained token is left.  pt: texts are joined with eos and cut into
`cutoff_len` blocks, loss on every token. Results are cached by content, so a second run skips this.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

from studio.data import convert, readers, registry
from studio.data.registry import DataError
from studio.data.templates import Template
from studio.spec.stages import PREFERENCE_STAGES

CACHE_VERSION = 1
IGNORE = -100


@dataclass
class Report:
    examples: int = 0
    tokens: int = 0
    trained_tokens: int = 0
    truncated: int = 0
    dropped: int = 0
    issues: list = field(default_factory=list)

    def add(self, other: "Report"):
        for k in ("examples", "tokens", "trained_tokens", "truncated", "dropped"):
            setattr(self, k, getattr(self, k) + getattr(other, k))
        self.issues += other.issues


def usable(e: registry.DatasetEntry, stage: str) -> None:
    """Refuse an entry the stage cannot train on, saying why."""
    from studio.data import preference

    if stage in PREFERENCE_STAGES:
        return preference.usable(e, stage)
    where = f"dataset `{e.name}`"
    if e.kind == "ranking":
        raise DataError(f"{where} is preference data (`ranking: true`: chosen/rejected answers). Stage {stage} trains on "
                        "single answers; train on it with a preference stage (DPO: method.stage=dpo; or kto, rm), or remove it from data.dataset.")
    if e.kind == "prompt":
        raise DataError(f"{where} holds prompts without answers to learn (`columns.reference`); use it with "
                        "method.stage=grpo, or remove it from data.dataset.")
    if e.kind == "kto":
        raise DataError(f"{where} holds answers labelled good or bad (`kto_tag`), which need method.stage=kto; stage {stage} "
                        "cannot use them. Remove it from data.dataset.")
    if stage == "sft" and e.kind == "text":
        raise DataError(f"{where} is plain text (columns.prompt: text) with no answers to learn; use it with method.stage=pt")
    if stage == "pt" and e.kind != "text" and e.formatting != "alpaca":
        raise DataError(f"{where} is a chat dataset; stage pt trains on plain text (use method.stage=sft)")


def read_examples(dataset_dir, name: str, stage: str, max_samples=None, info=None):
    """(location, messages-or-text) pairs of one dataset, and the issues of its bad records."""
    e = registry.entry(dataset_dir, name, info)
    usable(e, stage)
    records, issues = readers.read_entry(e)
    limit = min(x for x in (max_samples, e.num_samples) if x) if (max_samples or e.num_samples) else None
    out = []
    for loc, rec in records:
        if limit is not None and len(out) >= limit:
            break
        try:
            out.append((loc, convert.to_text(rec, e) if stage == "pt" else convert.to_messages(rec, e)))
        except convert.RecordError as err:
            issues.append(f"{loc}: {err}")
    return out, issues


def encode_chat(messages, template: Template, cutoff_len: int, train_on_prompt=False, mask_history=False):
    """-> (input_ids, labels, truncated)."""
    segs = template.segments(messages)
    last_trained = max((i for i, (_, t) in enumerate(segs) if t), default=-1)
    ids, labels = [], []
    bos = template.tokenizer.bos_token_id
    if template.builtin and getattr(template.tokenizer, "add_bos_token", False) and bos is not None:
        ids.append(bos)
        labels.append(IGNORE)
    for i, (text, trained) in enumerate(segs):
        toks = template.tokenizer.encode(text, add_special_tokens=False)
        keep = train_on_prompt or (trained and (not mask_history or i == last_trained))
        ids += toks
        labels += toks if keep else [IGNORE] * len(toks)
    truncated = len(ids) > cutoff_len
    return ids[:cutoff_len], labels[:cutoff_len], truncated


def encode(examples, template: Template, stage: str, cutoff_len: int, train_on_prompt=False, mask_history=False):
    """Encode (location, example) pairs -> ({"input_ids": [...], "labels": [...]}, Report)."""
    rep = Report()
    cols = {"input_ids": [], "labels": []}
    if stage == "pt":
        tok = template.tokenizer
        stream = []
        for _, text in examples:
            stream += tok.encode(text, add_special_tokens=False) + ([tok.eos_token_id] if tok.eos_token_id is not None else [])
        for start in range(0, len(stream), cutoff_len):
            block = stream[start:start + cutoff_len]
            if len(block) < 2:
                continue
            cols["input_ids"].append(block)
            cols["labels"].append(list(block))
            rep.tokens += len(block)
            rep.trained_tokens += len(block) - 1
        rep.examples = len(cols["input_ids"])
        return cols, rep
    for loc, messages in examples:
        ids, labels, cut = encode_chat(messages, template, cutoff_len, train_on_prompt, mask_history)
        rep.truncated += cut
        n_trained = sum(1 for x in labels if x != IGNORE)
        if n_trained == 0:
            rep.dropped += 1
            continue
        cols["input_ids"].append(ids)
        cols["labels"].append(labels)
        rep.examples += 1
        rep.tokens += len(ids)
        rep.trained_tokens += n_trained
    return cols, rep


def cache_root() -> Path:
    return Path(os.environ.get("STUDIO_CACHE", Path.home() / ".cache" / "studio")) / "datasets"


def _fingerprint(spec, names, tokenizer, template_name) -> str:
    d = spec.data
    parts = {"v": CACHE_VERSION, "names": names, "stage": spec.method.stage, "template": template_name,
             "tok": getattr(tokenizer, "name_or_path", ""), "vocab": len(tokenizer), "chat": getattr(tokenizer, "chat_template", None),
             "cut": d.cutoff_len, "top": d.train_on_prompt, "mh": d.mask_history, "max": d.max_samples, "files": []}
    info = registry.read_info(d.dataset_dir)
    for n in names:
        parts["files"].append([n, info.get(n)])
        e = registry.entry(d.dataset_dir, n, info)
        if e.path and e.path.exists():
            parts["files"] += [[str(f), size, mtime] for f, size, mtime in registry.file_stats(e.path)]
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:24]


def encode_names(spec, names: list[str], tokenizer, template: Template, use_cache: bool = True):
    """Encode datasets by name -> (datasets.Dataset, Report). Every bad record is listed in the error."""
    import datasets

    d = spec.data
    key = _fingerprint(spec, names, tokenizer, template.name)
    path = cache_root() / key
    if use_cache and (path / "report.json").exists():
        try:
            ds = datasets.load_from_disk(str(path / "data"))
            return ds, Report(**json.loads((path / "report.json").read_text()))
        except Exception:
            pass
    info = registry.read_info(d.dataset_dir)
    all_examples, issues = [], []
    for n in names:
        ex, iss = read_examples(d.dataset_dir, n, spec.method.stage, d.max_samples, info)
        all_examples += ex
        issues += iss
    if issues:
        raise DataError(f"{len(issues)} bad record(s) in {', '.join(names)}; fix them (or remove them) and try again:", issues)
    cols, rep = encode(all_examples, template, spec.method.stage, d.cutoff_len, d.train_on_prompt, d.mask_history)
    if rep.examples == 0:
        raise DataError(
            f"no trainable tokens in {', '.join(names)}: {rep.dropped} of {len(all_examples)} example(s) had no answer tokens "
            f"left after templating and truncation ({rep.truncated} cut by data.cutoff_len={d.cutoff_len}). "
            "Raise data.cutoff_len or shorten the prompts."
        )
    ds = datasets.Dataset.from_dict(cols)
    if use_cache:
        try:
            tmp = path.with_name(path.name + f".tmp{os.getpid()}")
            ds.save_to_disk(str(tmp / "data"))
            (tmp / "report.json").write_text(json.dumps(asdict(rep)))
            if not path.exists():
                tmp.rename(path)
            ds = datasets.load_from_disk(str(path / "data"))
        except OSError:
            pass
    return ds, rep


def build(spec, tokenizer, template: Template | None = None):
    """-> (train Dataset, eval Dataset or None, Report) for a training spec."""
    template = template or Template(spec.model.template, tokenizer)
    train, rep = encode_names(spec, list(spec.data.dataset), tokenizer, template)
    evals = None
    if spec.data.eval_dataset:
        evals, _ = encode_names(spec, list(spec.data.eval_dataset), tokenizer, template)
    elif spec.data.val_size > 0:
        size = spec.data.val_size if spec.data.val_size < 1 else int(spec.data.val_size)
        if (isinstance(size, int) and size >= len(train)) or len(train) < 2:
            raise DataError(f"data.val_size={spec.data.val_size} leaves no training examples (only {len(train)}); lower it")
        split = train.train_test_split(test_size=size, seed=spec.train.seed)
        train, evals = split["train"], split["test"]
    return train, evals, rep
