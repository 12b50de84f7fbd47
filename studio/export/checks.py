"""Checks of an export: the saved model reloaded with plain transformers (no peft) against base + adapter,
and the GGUF files loaded in llama.cpp against the saved model.

    ref = logits(peft_model, tok, prompts)                   # before merging, fp32
    report, got = verify(export_dir, tok, prompts, ref, "fp16", 0.25, stop_ids)
    report["gguf"] = check_gguf(export_dir, ["model-f16.gguf"], tok, prompts, got)
"""
from __future__ import annotations

import os
from pathlib import Path

# llama.cpp computes in its own precision; its next-token choice must agree with transformers on nearly every
# prompt position (a wrong tensor layout agrees almost nowhere).
# The k-quants round harder (4-6 bits per weight), so fewer positions keep transformers' first choice.
GGUF_MIN_AGREEMENT = {"f32": 0.95, "f16": 0.95, "bf16": 0.9, "q8_0": 0.8, "q6_k": 0.8, "q5_k_m": 0.75, "q4_k_m": 0.7}
FIRST_TOKENS = 8  # greedy continuation of the first prompt compared token by token with transformers


def logits(model, tok, prompts: list[str]) -> list:
    """Logits (float32, CPU) at every position of each prompt."""
    import torch

    out = []
    device = next(model.parameters()).device
    with torch.no_grad():
        for p in prompts:
            ids = tok(p, return_tensors="pt", add_special_tokens=False).input_ids.to(device)
            out.append(model(input_ids=ids).logits[0].float().cpu())
    return out


def load_plain(export_dir: str | Path):
    """The export as plain transformers loads it (no peft anywhere), upcast to fp32 for comparing."""
    import torch
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(export_dir), dtype=torch.float32).eval()


def verify(export_dir: Path, tok, prompts: list[str], ref: list, dtype: str, tolerance: float, stop_ids: list[int],
           question: str = "") -> tuple[dict, list]:
    """Compare the reloaded export with the reference logits; a greedy sample answer for the first prompt.

    Returns the report and the export's own logits (the reference for the GGUF check)."""
    import torch

    model = load_plain(export_dir)
    got = logits(model, tok, prompts)
    diffs = [float((a - b).abs().max()) for a, b in zip(got, ref)]
    agree = [float((a.argmax(-1) == b.argmax(-1)).float().mean()) for a, b in zip(got, ref)]
    ids = tok(prompts[0], return_tensors="pt", add_special_tokens=False).input_ids
    with torch.no_grad():
        gen = model.generate(ids, max_new_tokens=32, do_sample=False, eos_token_id=stop_ids, pad_token_id=tok.pad_token_id)
    answer = tok.decode(gen[0, ids.shape[1]:], skip_special_tokens=True).strip()
    del model
    worst = max(diffs)
    ok = worst <= tolerance
    return {
        "ok": ok, "max_logit_diff": worst, "greedy_ids": gen[0, ids.shape[1]:].tolist(), "tolerance": tolerance, "dtype": dtype, "per_prompt_max_diff": diffs,
        "top1_agreement": min(agree), "prompts": prompts, "sample": {"prompt": question or prompts[0], "answer": answer},
        "summary": f"largest logit difference {worst:.4g} {'<=' if ok else '>'} {tolerance} allowed for {dtype}",
        "reference": "base model (fp32) + adapter, unmerged",
    }, got


def check_gguf(export_dir: Path, files: list[str], tok, prompts: list[str], ref: list,
               greedy: list[int] | None = None) -> dict | None:
    """Load each GGUF file in llama.cpp: same tokens as the tokenizer, same next-token choices as transformers,
    and (given transformers' greedy continuation of the first prompt) how many of its first tokens llama.cpp repeats.

    None when llama-cpp-python is not installed.
    """
    # llama.cpp's OpenMP threads spin while they wait: on a busy machine that makes a 1-second check take minutes
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    try:
        import llama_cpp
    except ImportError:
        return None
    import numpy as np

    ids = [tok(p, add_special_tokens=False).input_ids for p in prompts]
    ref = [r.numpy() for r in ref]
    out = {}
    for name in files:
        qtype = name.removeprefix("model-").removesuffix(".gguf")
        llm = llama_cpp.Llama(str(Path(export_dir) / name), n_ctx=max(len(i) for i in ids) + 16, logits_all=True, verbose=False,
                              n_threads=min(4, os.cpu_count() or 1))
        try:
            same_tokens = all(llm.tokenize(p.encode(), add_bos=False, special=True) == i for p, i in zip(prompts, ids))
            diffs, agree = [], []
            for i, r in zip(ids, ref):
                llm.reset()
                llm.eval(i)
                got = np.asarray(llm.scores[: len(i)], dtype=np.float32)
                diffs.append(float(np.abs(got - r).max()))
                agree.append(float((got.argmax(-1) == r.argmax(-1)).mean()))
            same_first = _same_first(llm, ids[0], (greedy or [])[:FIRST_TOKENS])
        finally:
            llm.close()
        agreement = float(np.mean(agree))
        ok = same_tokens and agreement >= GGUF_MIN_AGREEMENT.get(qtype, 0.8)
        out[name] = {"ok": ok, "same_tokens_as_tokenizer": same_tokens, "max_logit_diff": max(diffs),
                     "top1_agreement": agreement, "min_agreement": GGUF_MIN_AGREEMENT.get(qtype, 0.8)}
        if greedy:
            out[name]["first_tokens_same"] = same_first
            out[name]["first_tokens"] = len(greedy[:FIRST_TOKENS])
    return out


def _same_first(llm, prompt_ids: list[int], want: list[int]) -> int:
    """How many leading tokens of llama.cpp's greedy continuation equal `want` (transformers' greedy tokens)."""
    if not want:
        return 0
    llm.reset()
    n = 0
    for i, t in enumerate(llm.generate(prompt_ids, temp=0.0, top_k=1)):
        if t != want[i]:
            break
        n += 1
        if n == len(want):
            break
    return n
