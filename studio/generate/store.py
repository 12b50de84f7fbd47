"""What a generate job keeps, in its run folder, line by line as it is kept (a restart reads it back and goes on).

    RUN/instructions.jsonl   self_instruct: the new instructions kept, {"id", "instruction"}
    RUN/samples.jsonl        finished records, {"id", "instruction", "input", "output", ...}
    RUN/dropped.jsonl        what was dropped and why, {"stage", "reason", "text", ...}
    RUN/output.json          which dataset this run writes (so that a restart may replace its own)
    RUN/report.json          counts and examples of what was dropped (written at the end)

The output: DATASET_DIR/<generate.output_dataset>.json (alpaca format, written atomically), registered in
DATASET_DIR/dataset_info.json (read, add the entry, atomic replace).
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from studio.data import registry
from studio.spec import SpecError

INSTRUCTIONS, SAMPLES, DROPPED, OUTPUT, REPORT = "instructions.jsonl", "samples.jsonl", "dropped.jsonl", "output.json", "report.json"
EXAMPLES = 5  # examples per drop reason in the report


def read_jsonl(path: Path) -> list[dict]:
    """The complete lines of a jsonl file (a line cut short by a kill is skipped)."""
    out = []
    try:
        with open(path, encoding="utf-8") as f:
            for line in f:
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if isinstance(obj, dict):
                    out.append(obj)
    except FileNotFoundError:
        pass
    return out


def append_jsonl(path: Path, obj: dict) -> None:
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(obj, ensure_ascii=False) + "\n")
        f.flush()
        os.fsync(f.fileno())


class Store:
    def __init__(self, run_dir: str | Path):
        self.dir = Path(run_dir)
        self._repair()
        self.instructions = read_jsonl(self.dir / INSTRUCTIONS)
        self.samples = {s["id"]: s for s in read_jsonl(self.dir / SAMPLES)}
        self.dropped = read_jsonl(self.dir / DROPPED)

    def _repair(self) -> None:
        """A kill in the middle of a write leaves a line without its newline: end it, so the next line starts clean."""
        for name in (INSTRUCTIONS, SAMPLES, DROPPED):
            p = self.dir / name
            if p.exists() and p.stat().st_size and not p.read_bytes().endswith(b"\n"):
                with open(p, "a", encoding="utf-8") as f:
                    f.write("\n")

    def keep_instruction(self, text: str) -> dict:
        item = {"id": len(self.instructions), "instruction": text}
        append_jsonl(self.dir / INSTRUCTIONS, item)
        self.instructions.append(item)
        return item

    def keep_sample(self, record: dict) -> None:
        append_jsonl(self.dir / SAMPLES, record)
        self.samples[record["id"]] = record

    def drop(self, stage: str, reason: str, text: str, **detail) -> None:
        item = {"stage": stage, "reason": reason, "text": text, **detail}
        append_jsonl(self.dir / DROPPED, item)
        self.dropped.append(item)

    def counts(self, stage: str) -> dict:
        out: dict = {}
        for d in self.dropped:
            if d["stage"] == stage:
                out[d["reason"]] = out.get(d["reason"], 0) + 1
        return out

    def records(self) -> list[dict]:
        return [{k: v for k, v in self.samples[i].items() if k != "id"} for i in sorted(self.samples)]

    def report(self, **extra) -> dict:
        examples: dict = {}
        for d in self.dropped:
            key = f"{d['stage']}/{d['reason']}"
            if len(examples.setdefault(key, [])) < EXAMPLES:
                examples[key].append({k: v for k, v in d.items() if k not in ("stage", "reason")})
        rep = {**extra, "dropped": {s: self.counts(s) for s in ("instruction", "sample") if self.counts(s)},
               "examples": examples}
        tmp = self.dir / f".{REPORT}.tmp"
        tmp.write_text(json.dumps(rep, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        tmp.replace(self.dir / REPORT)
        return rep


def output_file(spec) -> Path:
    return Path(spec.data.dataset_dir) / f"{spec.generate.output_dataset}.json"


def _owned(spec, run_dir: Path) -> bool:
    try:
        mine = json.loads((run_dir / OUTPUT).read_text())
    except (OSError, json.JSONDecodeError):
        return False
    return mine.get("dataset") == spec.generate.output_dataset and Path(mine.get("file", "")).resolve() == output_file(spec).resolve()


def check_output(spec, run_dir: str | Path) -> None:
    """Refuse an output name that would replace someone else's dataset (unless generate.overwrite)."""
    g, run_dir = spec.generate, Path(run_dir)
    if g.output_dataset == g.source:
        raise SpecError(f"generate.output_dataset: `{g.output_dataset}` is the source dataset; choose another name, e.g. {g.source}_generated")
    if g.overwrite or _owned(spec, run_dir):
        return
    info = registry.read_info(spec.data.dataset_dir)
    if g.output_dataset in info:
        raise SpecError(f"generate.output_dataset: `{g.output_dataset}` is already registered in {registry.info_path(spec.data.dataset_dir)}; "
                        "choose another name, or set generate.overwrite=true to replace it")
    if output_file(spec).exists():
        raise SpecError(f"generate.output_dataset: {output_file(spec)} already exists; choose another name, or set generate.overwrite=true")


def claim_output(spec, run_dir: str | Path) -> None:
    check_output(spec, run_dir)
    info = {"dataset": spec.generate.output_dataset, "file": str(output_file(spec).resolve())}
    (Path(run_dir) / OUTPUT).write_text(json.dumps(info) + "\n")


def write_output(spec, records: list[dict]) -> Path:
    """Write the alpaca file atomically and register it (a restart replaces its own entry)."""
    path = output_file(spec)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(records, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    tmp.replace(path)
    registry.register(spec.data.dataset_dir, spec.generate.output_dataset, {"file_name": path.name}, overwrite=True)
    return path
