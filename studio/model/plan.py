"""What a training job will use on the hardware at hand: attention kernel, batching, precision, kernels.

    plan(spec, Hardware.detect())  -> Plan(attn="flash_attention_2", batching="packing, varlen (...)", ...)

One pure function decides, so that the child (studio/train.py, studio/models.py) and the Train tab (which
shows `Plan.text()` before Start) say the same thing. `Hardware.detect()` imports torch (the child);
`Hardware.light()` asks nvidia-smi only (the web UI never imports torch).
"""
from __future__ import annotations

import functools
import importlib.util
import os
import shutil
import subprocess
from dataclasses import dataclass, field

from studio.spec import ATTN_IMPLEMENTATIONS, PROMPT_STYLE, SpecError

ATTN_CHOICES = ATTN_IMPLEMENTATIONS
VARLEN = ("flash_attention_2", "flash_attention_3", "flex_attention")  # kernels that take packed rows without a mask


def _has(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


@dataclass(frozen=True)
class Hardware:
    cuda: bool = False
    name: str = "CPU"
    capability: float | None = None  # CUDA compute capability (8.0 = Ampere: bf16 and TF32)
    flash_attn: bool = False  # the flash_attn package (FlashAttention 2) is installed
    flash_attn_3: bool = False  # flash_attn_interface (FlashAttention 3, Hopper)
    liger: bool = False  # the liger_kernel package is installed

    @property
    def bf16(self) -> bool:
        return self.cuda and (self.capability or 0) >= 8.0

    @property
    def tf32(self) -> bool:
        return self.cuda and (self.capability or 0) >= 8.0

    @classmethod
    def _packages(cls) -> dict:
        return {"flash_attn": _has("flash_attn"), "flash_attn_3": _has("flash_attn_interface"), "liger": _has("liger_kernel")}

    @classmethod
    def detect(cls) -> "Hardware":
        """This process's view (imports torch): the current CUDA device, or the CPU."""
        import torch

        if not torch.cuda.is_available():
            return cls(**cls._packages())
        major, minor = torch.cuda.get_device_capability()
        return cls(cuda=True, name=torch.cuda.get_device_name(), capability=major + minor / 10, **cls._packages())

    @classmethod
    def light(cls, devices: str | None = None) -> "Hardware":
        """Without torch: nvidia-smi's first GPU (or the one `launch.devices` names first); the CPU if none."""
        rows = [] if devices == "cpu" else _smi_rows()
        if not rows:
            return cls(**cls._packages())
        first = (devices or "").split(",")[0].strip()
        row = next((r for r in rows if r[0] == first), rows[0])
        try:
            cap = float(row[2])
        except ValueError:
            cap = None
        return cls(cuda=True, name=row[1], capability=cap, **cls._packages())


@functools.lru_cache(maxsize=1)
def _smi_rows() -> tuple:
    """(index, name, compute capability) of each GPU as nvidia-smi lists them; empty without nvidia-smi."""
    exe = shutil.which("nvidia-smi")
    if not exe:
        return ()
    try:
        res = subprocess.run([exe, "--query-gpu=index,name,compute_cap", "--format=csv,noheader"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return ()
    if res.returncode != 0:
        return ()
    return tuple(tuple(p.strip() for p in line.split(",")) for line in res.stdout.strip().splitlines() if line.count(",") >= 2)


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
