"""`studio data check`: read every record of the named datasets (all, by default) and report what is wrong.

    studio data check --dataset-dir data identity alpaca_demo
"""
from __future__ import annotations

from dataclasses import dataclass, field

from studio.data import convert, preference, readers, registry
from studio.data.encode import encode, usable
from studio.data.registry import DataError
from studio.spec.stages import PREFERENCE_STAGES, STAGE_TABLE


@dataclass
class Result:
    name: str
    kind: str = ""
    records: int = 0
    issues: list = field(default_factory=list)
    note: str = ""
    stats: dict = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.issues


def check_one(dataset_dir, name: str, stage: str | None = None, template=None, cutoff_len: int = 1024, info=None) -> Result:
    r = Result(name)
    try:
        e = registry.entry(dataset_dir, name, info)
        r.kind = e.kind
        if stage:
            usable(e, stage)
        records, issues = readers.read_entry(e)
    except DataError as err:
        r.issues.append(str(err))
        return r
    r.records = len(records)
    r.issues += issues
    examples = []
    for loc, rec in records:
        try:
            if e.kind == "prompt" or (stage and STAGE_TABLE[stage].rows == "prompts"):
                preference.to_prompt(rec, e)
            elif e.kind == "ranking":
                convert.to_pair(rec, e)
            elif e.kind == "text" or stage == "pt":
                examples.append((loc, convert.to_text(rec, e)))
            elif e.kind == "kto":
                preference.to_kto(rec, e)
            else:
                examples.append((loc, convert.to_messages(rec, e)))
        except convert.RecordError as err:
            r.issues.append(f"{loc}: {err}")
    fits = ", ".join(s.name for s in STAGE_TABLE.values() if e.kind in s.data)
    if e.kind == "ranking":
        r.note = f"preference pairs: for stages {fits}; sft and pt refuse it"
    elif e.kind == "kto":
        r.note = f"labelled answers: for stage {fits}; sft and pt refuse it"
    elif e.kind == "prompt":
        r.note = f"prompts with a reference answer: for stage {fits}"
    if template is not None and examples and not r.issues and stage not in PREFERENCE_STAGES:
        st = "pt" if (e.kind == "text" or stage == "pt") else "sft"
        _, rep = encode(examples, template, st, cutoff_len)
        r.stats = {"examples": rep.examples, "tokens": rep.tokens, "trained_tokens": rep.trained_tokens,
                   "truncated": rep.truncated, "dropped": rep.dropped}
        if st == "sft" and rep.examples == 0:
            r.issues.append(f"no trainable tokens: all {rep.dropped} examples lose their answers to cutoff_len={cutoff_len} "
                            f"({rep.truncated} cut); raise cutoff_len")
        elif rep.dropped:
            r.note = f"{rep.dropped} example(s) lose every answer token at cutoff_len={cutoff_len} and will be skipped"
    return r


def check(dataset_dir, names=None, stage=None, template=None, cutoff_len=1024) -> list[Result]:
    info = registry.read_info(dataset_dir)
    return [check_one(dataset_dir, n, stage, template, cutoff_len, info) for n in (names or list(info))]
