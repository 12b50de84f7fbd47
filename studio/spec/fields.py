"""The pieces every section is made of: the error type, field constructors with help text, the choice lists."""
from __future__ import annotations

from dataclasses import field

from studio.errors import UserError


class SpecError(UserError):
    """A user's mistake in a spec: the message names the field and what to do."""


def _f(default, help: str, choices=None, **kw):
    meta = {"help": help}
    if choices is not None:
        meta["choices"] = list(choices)
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda d=default: type(d)(d), metadata=meta, **kw)
    return field(default=default, metadata=meta, **kw)


def _sub(cls, help: str):
    return field(default_factory=cls, metadata={"help": help})


FINETUNING_TYPES = ["lora", "full", "freeze", "adalora", "ia3", "prefix", "prompt", "ptuning", "ptuning_v2"]
SCHEDULERS = ["constant", "constant_with_warmup", "linear", "cosine", "cosine_with_restarts", "polynomial"]
OPTIMIZERS = ["adamw_torch", "adamw_torch_fused", "adamw_8bit", "paged_adamw_8bit", "adafactor", "sgd"]
DEEPSPEED_PRESETS = ["z0", "z2", "z2_offload", "z3", "z3_offload"]

PROMPT_STYLE = ("prefix", "prompt", "ptuning", "ptuning_v2")
GGUF_TYPES = ("q4_k_m", "f16", "q8_0", "q5_k_m", "q6_k", "bf16", "f32")  # Q4_K_M first: what Ollama users run
ATTN_IMPLEMENTATIONS = ["auto", "eager", "sdpa", "flash_attention_2", "flash_attention_3", "flex_attention"]
MERGE_METHODS = ["cat", "linear", "svd", "ties", "ties_svd", "dare_linear", "dare_ties", "dare_linear_svd", "dare_ties_svd",
                 "magnitude_prune", "magnitude_prune_svd"]
DENSITY_METHODS = [m for m in MERGE_METHODS if m.startswith(("ties", "dare", "magnitude"))]
