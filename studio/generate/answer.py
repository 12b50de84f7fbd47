"""answer: fill in (or, with generate.replace_outputs, replace) the outputs of a dataset's prompts with the
generator's answers: the everyday way to distill a strong model into a small one.

Records that already have an output are kept as they are (unless replace_outputs). The others go to the
generator in chunks; each answer is appended to RUN/samples.jsonl as it is kept, under the record's index, so a
restarted job sends only what is still missing. A request that failed for good, or an empty answer, is counted
(dropped.jsonl) and tried again by the next start.
"""
from __future__ import annotations


def run(spec, sources: list[dict], store, gen, progress, say) -> None:
    g = spec.generate
    progress.phase = "answers"
    todo = []
    for i, src in enumerate(sources):
        if i in store.samples:
            continue
        record = {k: v for k, v in src.items() if k != "messages"}
        if src["output"] and not g.replace_outputs:
            store.keep_sample({"id": i, **record})
        else:
            todo.append((i, src))
    kept_before = len(store.samples)
    say(f"{len(todo)} prompt(s) to answer, {kept_before} record(s) kept")
    step = g.batch_size if g.generator == "local" else g.concurrency * 2
    for k in range(0, len(todo), step):
        chunk = todo[k:k + step]
        texts = gen.generate([src["messages"] for _, src in chunk], say)
        for (i, src), text in zip(chunk, texts):
            progress.generated += text is not None
            if text is None:
                store.drop("sample", "request_failed", src["instruction"][:500], id=i)
            elif not text.strip():
                store.drop("sample", "empty_output", src["instruction"][:500], id=i)
            else:
                record = {key: v for key, v in src.items() if key != "messages"}
                store.keep_sample({"id": i, **record, "output": text.strip()})
        progress.emit()
    missing = len(sources) - len(store.samples)
    if missing:
        say(f"{missing} prompt(s) are still without an answer (see report.json); start the job again on the same run folder to retry them")
