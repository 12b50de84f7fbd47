"""self_instruct: seed tasks -> rounds of new instructions from the model -> filters -> an input and output for each.

Each round sends generate.batch_size requests; each shows generate.num_prompt_instructions example instructions
(sampled from the seed tasks and the instructions kept so far) and asks for generate.instructions_per_request
new ones. Every instruction found goes through the filters (studio/generate/filters.py) against the seeds and
everything kept before it, and is appended to RUN/instructions.jsonl when kept. Once enough are kept (or after
generate.max_rounds rounds), each kept instruction without a sample gets one request for its input and output.
"""
from __future__ import annotations

import random

from studio.generate import prompts
from studio.generate.filters import Filters


def run(spec, sources: list[dict], store, gen, progress, say) -> None:
    g = spec.generate
    seeds = [s["instruction"] for s in sources]
    seeds = [s for s in dict.fromkeys(x.strip() for x in seeds) if s]
    filt = Filters(g.similarity_threshold, g.out_of_scope_words, g.min_words, g.max_words)
    for s in seeds + prompts.requirement_lines():
        filt.add(s)
    for k in store.instructions:
        filt.add(k["instruction"])
    progress.generated = len(store.instructions) + sum(store.counts("instruction").values())
    rng = random.Random(g.seed + progress.generated)
    progress.phase = "instructions"
    rounds = 0
    while len(store.instructions) < g.num_instructions and rounds < g.max_rounds:
        rounds += 1
        pool = seeds + [k["instruction"] for k in store.instructions]
        chats = [prompts.instruction_request(rng.sample(pool, min(g.num_prompt_instructions, len(pool))), g.instructions_per_request)
                 for _ in range(g.batch_size)]
        texts = gen.generate(chats, say)
        for text, cut in zip(texts, gen.truncated or [False] * len(texts)):
            if text is None:
                continue  # failed for good: counted by the generator
            found = prompts.parse_instructions(text, truncated=cut)[: g.instructions_per_request]
            if not found:
                store.drop("instruction", "unparsable", text[:500])
            for cand in found:
                if len(store.instructions) >= g.num_instructions:
                    break
                progress.generated += 1
                reason, detail = filt.offer(cand)
                if reason:
                    store.drop("instruction", reason, cand, **detail)
                else:
                    store.keep_instruction(cand)
        progress.emit(force=True, round=rounds)
    if len(store.instructions) < g.num_instructions:
        say(f"kept {len(store.instructions)} of {g.num_instructions} instructions after {rounds} round(s) (generate.max_rounds={g.max_rounds}); "
            "writing their inputs and outputs")
    instances(spec, store, gen, progress, say)


def instances(spec, store, gen, progress, say) -> None:
    g = spec.generate
    done = {d.get("id") for d in store.dropped if d["stage"] == "sample" and d["reason"] == "empty_output"}
    todo = [k for k in store.instructions if k["id"] not in store.samples and k["id"] not in done]
    progress.phase = "samples"
    step = g.batch_size if g.generator == "local" else g.concurrency * 2
    for i in range(0, len(todo), step):
        chunk = todo[i:i + step]
        texts = gen.generate([prompts.instance_request(k["instruction"]) for k in chunk], say)
        for k, text in zip(chunk, texts):
            if text is None:
                continue  # the request failed for good: a restart tries again
            inp, out = prompts.parse_instance(text)
            if not out:
                store.drop("sample", "empty_output", k["instruction"], id=k["id"], answer=text[:500])
            else:
                store.keep_sample({"id": k["id"], "instruction": k["instruction"], "input": inp, "output": out})
        progress.emit(force=True)
