"""The generate job: python -m studio.generate.job RUN_DIR   (what `studio generate SPEC` starts in the background)

spec -> generator (local model or endpoint) -> self_instruct (seed tasks -> new instructions -> filters -> inputs
and outputs) or answer (a dataset's prompts -> a teacher's answers) -> RUN/samples.jsonl, line by line ->
DATASET_DIR/<output_dataset>.json registered in dataset_info.json, and RUN/report.json.

Events: start, message, progress (done, total, requested, generated, kept, dropped by reason, failed_requests),
and done / error / aborted. Started again on the same run folder, the job goes on from what it kept.
SIGTERM or SIGINT ends it with `aborted`; what was kept stays kept.
"""
from __future__ import annotations

import time
from pathlib import Path

from studio.run import events as ev
from studio.run import job
from studio.generate import store as storemod


class Progress:
    """Counts of the job, written as `progress` events (at most every `every` seconds unless forced)."""

    def __init__(self, writer, store, requested: int, unit: str, every: float = 1.0):
        self.writer, self.store, self.requested, self.unit, self.every = writer, store, requested, unit, every
        self.generated = 0
        self.gen = None
        self.last = 0.0
        self.phase = ""

    def kept(self) -> int:
        return len(self.store.instructions) if self.unit == "instructions" else len(self.store.samples)

    def emit(self, force: bool = False, **extra) -> None:
        if not force and time.time() - self.last < self.every:
            return
        self.last = time.time()
        dropped: dict = {}
        for stage in ("instruction", "sample"):
            for k, v in self.store.counts(stage).items():
                dropped[k] = dropped.get(k, 0) + v
        kept = self.kept()
        self.writer.write("progress", done=min(kept, self.requested), total=self.requested, unit=self.unit, phase=self.phase,
                          requested=self.requested, generated=self.generated, kept=kept, samples=len(self.store.samples),
                          dropped=dropped, failed_requests=getattr(self.gen, "failed_requests", 0), **extra)


def source_records(spec) -> list[dict]:
    """The source dataset as alpaca records with `messages` (the chat up to the answer) and `output` ("" if none)."""
    from studio.data import convert, readers, registry
    from studio.data.encode import usable
    from studio.evaluate.predictions import _split

    d, name = spec.data, spec.generate.source
    e = registry.entry(d.dataset_dir, name)
    usable(e, "sft")
    records, issues = readers.read_entry(e)
    out = []
    for loc, rec in records[: d.max_samples or None]:
        try:
            messages, label = _split(dict(rec), e, convert)
        except convert.RecordError as err:
            issues.append(f"{loc}: {err}")
            continue
        if e.formatting == "alpaca":
            item = {"instruction": convert._text(rec.get(e.column("prompt")), "prompt"),
                    "input": convert._text(rec.get(e.column("query")), "query") if e.column("query") else ""}
            for key in ("system", "history"):
                col = e.column(key)
                if col and rec.get(col):
                    item[key] = rec[col]
        else:
            item = _alpaca_from_messages(messages)
        out.append({**item, "output": label or "", "messages": messages})
    if issues:
        raise registry.DataError(f"{len(issues)} bad record(s) in `{name}`; fix or remove them (studio data check {name}):", issues)
    if not out:
        raise registry.DataError(f"`{name}` has no records")
    return out


def _alpaca_from_messages(messages: list[dict]) -> dict:
    system = messages[0]["content"] if messages and messages[0]["role"] == "system" else ""
    turns = [m for m in messages if m["role"] != "system"]
    history = [[turns[i]["content"], turns[i + 1]["content"]] for i in range(0, len(turns) - 1, 2)]
    item = {"instruction": turns[-1]["content"], "input": ""}
    if system:
        item["system"] = system
    if history:
        item["history"] = history
    return item


def run(spec, run_dir: Path, writer: ev.EventWriter) -> dict:
    from studio.generate import answer, generators, selfinstruct

    g = spec.generate
    storemod.claim_output(spec, run_dir)
    store = storemod.Store(run_dir)
    say = lambda text: writer.write("message", text=text)  # noqa: E731
    sources = source_records(spec)
    requested = g.num_instructions if g.mode == "self_instruct" else len(sources)
    writer.write("start", task="generate", mode=g.mode, total_steps=requested, num_examples=len(sources),
                 resumed=len(store.samples) + len(store.instructions), generator=g.generator)
    if store.samples or store.instructions:
        say(f"continuing: {len(store.instructions)} instruction(s) and {len(store.samples)} sample(s) kept before")
    if g.generator == "local" and spec.train.num_threads:
        import torch

        torch.set_num_threads(spec.train.num_threads)
    progress = Progress(writer, store, requested, "instructions" if g.mode == "self_instruct" else "samples")
    gen = generators.make(spec, say)
    progress.gen = gen
    try:
        if g.mode == "self_instruct":
            selfinstruct.run(spec, sources, store, gen, progress, say)
        else:
            answer.run(spec, sources, store, gen, progress, say)
    finally:
        if hasattr(gen, "close"):
            gen.close()
    progress.emit(force=True)
    records = store.records()
    if not records:
        raise generators.GenerateError("nothing was kept, so no dataset was written; see report.json for what was dropped "
                                       "and why (a bigger model, generate.max_rounds, or looser filters may help)")
    path = storemod.write_output(spec, records)
    rep = store.report(mode=g.mode, requested=requested, kept=progress.kept(), records=len(records),
                       failed_requests=gen.failed_requests, output={"dataset": g.output_dataset, "file": str(path)})
    say(f"wrote {len(records)} record(s) to {path}, registered as `{g.output_dataset}`; dropped: {rep['dropped'] or 'none'}")
    return {"step": progress.kept(), "records": len(records), "dataset": g.output_dataset, "file": str(path),
            "dropped": rep["dropped"], "failed_requests": gen.failed_requests, "report": str(run_dir / storemod.REPORT)}


def body(spec, run_dir: Path, writer: ev.EventWriter):
    return "done", run(spec, run_dir, writer)


def main(argv: list[str] | None = None) -> int:
    return job.main(body, __doc__, argv, step_from_progress=True)


if __name__ == "__main__":
    raise SystemExit(main())
