"""One model of an evaluation loaded for generation, and a prompt tokenized exactly as training tokenized it.
Used by the evaluate job, the local data generator and the local judge.

    model, tokenizer = load(spec, entry)       # entry: the resolved model (studio.model.source.Resolved)
    ids = prompt_ids(messages, template, spec.data.cutoff_len)
"""
from __future__ import annotations

import dataclasses


def prompt_ids(messages: list, template, cutoff_len: int) -> list[int]:
    """Token ids of the prompt exactly as training tokenized it (segment by segment), left-cut to cutoff_len."""
    from studio.data.encode import encode_chat

    ids, labels, _ = encode_chat(messages + [{"role": "assistant", "content": ""}], template, 10 ** 9)
    start = next((i for i, x in enumerate(labels) if x != -100), len(ids))
    return ids[:start][-cutoff_len:]


def load(spec, entry):
    """The model (with its adapter, on the GPU when there is one) and tokenizer of a resolved entry, for generation."""
    import torch

    from studio.model import models

    mspec = dataclasses.replace(spec.model, name_or_path=entry.model, adapter=None)
    model = models.load_model(mspec, spec.train.compute_dtype)
    if entry.adapter is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(entry.adapter))
    if not spec.model.quantization_bit and torch.cuda.is_available():
        model.to("cuda")
    model.eval()
    tokenizer = models.load_tokenizer(entry.model, spec.model.trust_remote_code)
    return model, tokenizer
