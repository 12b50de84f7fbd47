"""What a training job will use on the hardware at hand: attention kernel, batching, precision, kernels.

    plan(spec, Hardware.detect())  -> Plan(attn="flash_attention_2", batching="packing, varlen (...)", ...)

One pure function decides, so that the child (studio/train/job.py, studio/model/models.py) and the Train tab (which
shows `Plan.text()` before Start) say the same thing; `Hardware` (studio/hardware.py) says what the device offers.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field

from studio.hardware import Hardware
from studio.spec import ATTN_IMPLEMENTATIONS, PROMPT_STYLE, SpecError

ATTN_CHOICES = ATTN_IMPLEMENTATIONS
VARLEN = ("flash_attention_2", "flash_attention_3", "flex_attention")  # kernels that take packed rows without a mask


@dataclass
class Plan:
    attn: str  # the attn_implementation passed to from_pretrained
    batching: str  # "padded, grouped by length" | "packing, varlen" | "packing, rows of cutoff_len"
    dtype: str  # bf16 | fp16 | fp32
    tf32: bool = False
    liger: bool = False
    device: str = "CPU"
    group_by_length: bool = False
    packed_rows: bool = False  # packing without a varlen kernel: one row per packed bin, not one giant row
    notes: list = field(default_factory=list)

    def text(self) -> str:
        kernels = {"flash_attention_2": "flash attention 2", "flash_attention_3": "flash attention 3",
                   "flex_attention": "flex attention", "sdpa": "SDPA attention", "eager": "eager attention"}[self.attn]
        parts = [f"{self.batching} with {kernels}", self.dtype + (" + TF32 matmuls" if self.tf32 else "")]
        if self.liger:
            parts.append("Liger kernels")
        line = f"on {self.device}: " + ", ".join(parts)
        return line + "".join(f"; {n}" for n in self.notes)


def attn_implementation(requested: str, hw: Hardware) -> str:
    """`auto` -> the fastest kernel installed: FlashAttention 3 on Hopper, 2 on Ampere or newer, else SDPA."""
    if requested not in ATTN_CHOICES:
        raise SpecError(f"model.attn_implementation: `{requested}` is not one of {', '.join(ATTN_CHOICES)}")
    if requested == "auto":
        if hw.cuda and hw.flash_attn_3 and (hw.capability or 0) >= 9.0:
            return "flash_attention_3"
        if hw.cuda and hw.flash_attn and (hw.capability or 0) >= 8.0:
            return "flash_attention_2"
        return "sdpa"
    if requested in ("flash_attention_2", "flash_attention_3"):
        pkg, have = ("flash_attn", hw.flash_attn) if requested == "flash_attention_2" else ("flash_attn_interface", hw.flash_attn_3)
        if not hw.cuda:
            raise SpecError(f"model.attn_implementation={requested}: needs a CUDA GPU and this job has none; use auto or sdpa")
        if not have:
            raise SpecError(f"model.attn_implementation={requested}: the `{pkg}` package is not installed; "
                            "install it (pip install flash-attn --no-build-isolation) or use auto")
    return requested


def dtype_name(requested: str, hw: Hardware) -> str:
    if requested == "auto":
        return "bf16" if hw.bf16 else "fp32"
    return requested


def plan(spec, hw: Hardware) -> Plan:
    """What `studio train` will use for `spec` on `hw`; raises SpecError for what the hardware cannot do."""
    attn = attn_implementation(spec.model.attn_implementation, hw)
    packing = spec.data.packing and spec.method.finetuning_type not in PROMPT_STYLE
    if spec.train.liger_kernel:
        if not hw.cuda:
            raise SpecError("train.liger_kernel: Liger's Triton kernels run on CUDA GPUs only and this job has none; "
                            "set train.liger_kernel=false on the CPU")
        if not hw.liger:
            raise SpecError("train.liger_kernel: the `liger-kernel` package is not installed; pip install liger-kernel, "
                            "or set train.liger_kernel=false")
    notes = []
    if packing and attn in VARLEN:
        batching, rows, grouped = "packing (varlen, no masked attention)", False, False
    elif packing:
        batching, rows, grouped = "packing into rows of cutoff_len", True, False
        if hw.cuda:
            notes.append("no varlen kernel installed (flash-attn): each packed row is masked, not one giant row")
    elif spec.data.group_by_length:
        batching, rows, grouped = "padded batches grouped by length", False, True
    else:
        batching, rows, grouped = "padded batches", False, False
    return Plan(attn=attn, batching=batching, dtype=dtype_name(spec.train.compute_dtype, hw), tf32=hw.tf32,
                liger=spec.train.liger_kernel, device=hw.name, group_by_length=grouped, packed_rows=rows, notes=notes)


def local_device_map(cuda: bool, env: dict | None = None) -> dict:
    """Where a quantized model goes: this rank's own GPU (LOCAL_RANK, set by torchrun), or the CPU."""
    env = os.environ if env is None else env
    return {"": int(env.get("LOCAL_RANK", 0))} if cuda else {"": "cpu"}
