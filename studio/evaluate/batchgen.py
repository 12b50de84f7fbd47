"""Batched generation for the evaluate job, with rows that come and go.

Up to `batch_size` prompts generate together, in rounds of CHUNK new tokens through `model.generate`. After each
round the rows that reached a stop token (or max_new_tokens) leave the batch with their slice of the KV cache, and
when a quarter of the rows are free, waiting prompts take them: their prompt pass runs on its own and their KV
cache joins the running one, both left-padded to one length (positions follow the attention mask, so padding
moves nothing). A short answer never holds a row, and a batch does not end in a long tail of one or two rows.
Greedy answers are those of batch size 1 (tests/test_evaluate.py). Out of memory halves the batch and starts the
rows under way again.

A batch is a dict: "rows" (what each row stands for: a prompt's index here, a request in studio/serve/engine.py),
"ids" and "mask" (left-padded tensors, one row each) and "cache" (the KV cache). left_pad, joinable and join are
shared with the server's engine.
"""
from __future__ import annotations

from collections import deque

CHUNK = 8  # new tokens per round


def halve_on_oom(e: BaseException, size: int, say) -> int:
    """The batch size to go on with after `e`: half of `size` when `e` ran out of memory; anything else is raised."""
    import torch

    if not (isinstance(e, torch.OutOfMemoryError) or (isinstance(e, RuntimeError) and "out of memory" in str(e).lower())):
        raise e
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    if size == 1:
        from studio.model.models import ModelError

        raise ModelError("out of memory at batch size 1: lower data.cutoff_len or eval.max_new_tokens, "
                         "or load the model in 4 bits (model.quantization_bit=4)") from None
    say(f"out of memory at batch size {size}: going on with batch size {size // 2} (set eval.batch_size={size // 2} to start there)")
    return size // 2


def left_pad(rows: list[list[int]], pad: int, device):
    """Token-id rows left-padded with `pad` to the longest -> (ids, mask) tensors on `device`; mask 0 on the padding."""
    import torch

    width = max(len(r) for r in rows)
    ids = torch.tensor([[pad] * (width - len(r)) + r for r in rows], device=device)
    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows], device=device)
    return ids, mask


def joinable(cache) -> bool:
    """Only plain per-layer key/value caches can be padded and joined (not sliding-window or quantized ones)."""
    from transformers.cache_utils import DynamicCache, DynamicLayer

    return type(cache) is DynamicCache and all(type(layer) is DynamicLayer for layer in cache.layers)


def join(a: dict, b: dict, pad: int) -> dict:
    """One batch from two (a's cache takes b's rows): ids, mask and every layer's keys and values left-padded to the
    longer of the two; `pad` fills the ids. Both caches must be joinable."""
    import torch

    width = max(a["ids"].shape[1], b["ids"].shape[1])

    def widen(t, n, value):  # left-pad the last dim (ids, mask) or dim 2 (keys, values) to n
        extra = n - (t.shape[1] if t.dim() == 2 else t.shape[2])
        if extra == 0:
            return t
        shape = list(t.shape)
        shape[1 if t.dim() == 2 else 2] = extra
        return torch.cat([t.new_full(shape, value), t], dim=1 if t.dim() == 2 else 2)

    for x, y in zip(a["cache"].layers, b["cache"].layers):
        x.keys = torch.cat([widen(x.keys, width - 1, 0), widen(y.keys, width - 1, 0)])
        x.values = torch.cat([widen(x.values, width - 1, 0), widen(y.values, width - 1, 0)])
    return {"rows": a["rows"] + b["rows"], "cache": a["cache"],
            "ids": torch.cat([widen(a["ids"], width, pad), widen(b["ids"], width, pad)]),
            "mask": torch.cat([widen(a["mask"], width, 0), widen(b["mask"], width, 0)])}


def generate(model, tokenizer, template, prompts: list[list[int]], ecfg, say=print, progress=None) -> tuple[list[str], int]:
    """Predictions for token-id prompts, in their order, and the number of tokens generated."""
    import torch


    device = next(model.parameters()).device
    stop = set(template.stop_token_ids())
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else min(stop)
    kw = dict(do_sample=ecfg.do_sample, eos_token_id=sorted(stop), pad_token_id=pad, return_dict_in_generate=True)
    kw.update(dict(temperature=ecfg.temperature, top_p=ecfg.top_p, top_k=ecfg.top_k) if ecfg.do_sample
              else dict(temperature=None, top_p=None, top_k=None))
    waiting = deque(sorted(range(len(prompts)), key=lambda i: -len(prompts[i])))  # longest first: out of memory shows early
    made: dict[int, list[int]] = {}
    preds, size, pool, ended = [""] * len(prompts), ecfg.batch_size, None, set()

    def advance(batch: dict, new_tokens: int) -> dict | None:
        """One generate call on `batch`; record the new tokens; return the rows still going, or None."""
        with torch.no_grad():
            out = model.generate(input_ids=batch["ids"], attention_mask=batch["mask"], past_key_values=batch.get("cache"),
                                 max_new_tokens=new_tokens, **kw)
        fresh = out.sequences[:, batch["ids"].shape[1]:]
        keep = []
        for r, (i, row) in enumerate(zip(batch["rows"], fresh.tolist())):
            cut = next((k for k, t in enumerate(row) if t in stop), None)
            made[i] += row if cut is None else row[:cut]
            if cut is None and len(made[i]) < ecfg.max_new_tokens:
                keep.append(r)
            else:
                preds[i] = tokenizer.decode(made[i], skip_special_tokens=True).strip()
                ended.add(i)
        if not keep:
            return None
        cache = out.past_key_values
        if len(keep) < len(batch["rows"]):
            cache.batch_select_indices(torch.tensor(keep, device=device))
        return {"rows": [batch["rows"][r] for r in keep], "ids": out.sequences[keep], "cache": cache,
                "mask": torch.cat([batch["mask"], torch.ones_like(fresh)], dim=1)[keep]}

    reported = 0
    while waiting or pool:
        try:
            free = size - (len(pool["rows"]) if pool else 0)
            if waiting and (pool is None or (free >= max(1, size // 4) and joinable(pool["cache"]))):
                rows = [waiting.popleft() for _ in range(min(free, len(waiting)))]
                made.update({i: [] for i in rows})
                ids, mask = left_pad([prompts[i] for i in rows], pad, device)
                joined = advance({"rows": rows, "ids": ids, "mask": mask}, 1)  # the prompt pass and a first token
                pool = pool if joined is None else joined if pool is None else join(pool, joined, pad)
            else:
                pool = advance(pool, min(CHUNK, ecfg.max_new_tokens - max(len(made[i]) for i in pool["rows"])))
        except Exception as e:
            size = halve_on_oom(e, size, say)
            under_way = sorted((i for i in made if i not in ended and i not in waiting), key=lambda i: -len(prompts[i]))
            waiting.extendleft(reversed(under_way))  # they start again, in smaller batches
            pool = None
            continue
        if progress and len(ended) > reported:
            reported = len(ended)
            progress(reported)
    return preds, sum(len(m) for m in made.values())
