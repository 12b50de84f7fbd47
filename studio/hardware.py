"""The machine's GPUs and what a job can use on them, asked once, without importing torch in the calling process.

    python -m studio.hardware          prints the GPUs (or that there is none) as the device picker shows them

The ground floor: both sides use it (the page's device picker and its "will use" line, the preflight, the child's
plan) and it imports nothing of studio. `detect()` asks `nvidia-smi` once (index, name, memory, compute
capability); without it, a short `python -c` child asks torch, unless this is a Linux machine without the device
files through which torch reaches a GPU (then there is none, and no child is started). GPU numbers are the ones
nvidia-smi shows (PCI bus order): `launch.devices=0,1` sets CUDA_DEVICE_ORDER=PCI_BUS_ID for the child so that the
numbers mean the same GPUs there. `Hardware.detect()` is the child's view (imports torch); `Hardware.light()` is
built from `detect()` (the web UI never imports torch).
"""
from __future__ import annotations

import functools
import importlib.util
import json
import os
import shutil
import subprocess
import sys
from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class GPU:
    index: int
    name: str
    memory_mib: int  # total
    free_mib: int | None = None
    capability: float | None = None  # CUDA compute capability (8.0 = Ampere: bf16 and TF32)

    @property
    def label(self) -> str:
        free = f", {self.free_mib / 1024:.0f} GiB free" if self.free_mib is not None else ""
        return f"GPU {self.index}: {self.name} ({self.memory_mib / 1024:.0f} GiB{free})"


_FIELDS = "index,name,memory.total,memory.free,compute_cap"

_TORCH_PROBE = """
import json, torch
out = []
if torch.cuda.is_available():
    for i in range(torch.cuda.device_count()):
        p = torch.cuda.get_device_properties(i)
        free = torch.cuda.mem_get_info(i)[0] // 2**20
        out.append({"index": i, "name": p.name, "memory_mib": p.total_memory // 2**20, "free_mib": free,
                    "capability": p.major + p.minor / 10})
print(json.dumps(out))
"""


def _number(text: str, kind=int):
    try:
        return kind(text)
    except ValueError:
        return None


def parse_smi(text: str) -> list[GPU]:
    """The CSV lines of `nvidia-smi --query-gpu=index,name,memory.total,memory.free[,compute_cap] --format=csv,noheader,nounits`."""
    gpus = []
    for line in text.strip().splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) < 3 or not parts[0].isdigit():
            continue
        free = _number(parts[3]) if len(parts) > 3 else None
        cap = _number(parts[4], float) if len(parts) > 4 else None
        gpus.append(GPU(int(parts[0]), parts[1], _number(parts[2]) or 0, free, cap))
    return gpus


def _from_smi(timeout: float) -> list[GPU] | None:
    exe = shutil.which("nvidia-smi")
    if not exe:
        return None
    for fields in (_FIELDS, _FIELDS.rsplit(",", 1)[0]):  # drivers before 510 do not know compute_cap
        try:
            res = subprocess.run([exe, f"--query-gpu={fields}", "--format=csv,noheader,nounits"], capture_output=True, text=True, timeout=timeout)
        except (OSError, subprocess.TimeoutExpired):
            return None
        if res.returncode == 0:
            return parse_smi(res.stdout)
    return None


# torch reaches a GPU on Linux only through one of these: NVIDIA's driver, ROCm's, or WSL's GPU bridge
_GPU_DEVICE_FILES = ("/dev/nvidiactl", "/dev/nvidia0", "/dev/kfd", "/dev/dxg")


def _from_torch(timeout: float) -> list[GPU]:
    if sys.platform.startswith("linux") and not any(os.path.exists(f) for f in _GPU_DEVICE_FILES):
        return []  # importing torch in a child (2 s of CPU) would only say the same
    try:
        res = subprocess.run([sys.executable, "-c", _TORCH_PROBE], capture_output=True, text=True, timeout=timeout)
        return [GPU(**g) for g in json.loads(res.stdout.strip().splitlines()[-1])] if res.returncode == 0 else []
    except (OSError, subprocess.TimeoutExpired, json.JSONDecodeError, IndexError, TypeError):
        return []


@functools.lru_cache(maxsize=1)
def detect(timeout: float = 60.0) -> tuple[GPU, ...]:
    """The GPUs of this machine (empty on a CPU-only machine). Cached: call `detect.cache_clear()` to look again."""
    gpus = _from_smi(timeout)
    return tuple(gpus if gpus is not None else _from_torch(timeout))


def choices(gpus: tuple[GPU, ...] | list[GPU] | None = None) -> list[tuple[str, str]]:
    """(label, launch.devices value) pairs for a device picker: every GPU, each GPU alone, or the CPU."""
    gpus = detect() if gpus is None else gpus
    out = []
    if len(gpus) > 1:
        out.append((f"all {len(gpus)} GPUs", ",".join(str(g.index) for g in gpus)))
    out += [(g.label, str(g.index)) for g in gpus]
    out.append(("CPU", "cpu"))
    return out


def _has(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


@dataclass(frozen=True)
class Hardware:
    """What one job's first device offers: the GPU (or the CPU) and the kernel packages installed."""
    cuda: bool = False
    name: str = "CPU"
    capability: float | None = None
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
        """Without torch: the first GPU of `detect()` (or the one `launch.devices` names first); the CPU if none."""
        gpus = () if devices == "cpu" else detect()
        if not gpus:
            return cls(**cls._packages())
        first = (devices or "").split(",")[0].strip()
        gpu = next((g for g in gpus if str(g.index) == first), gpus[0])
        return cls(cuda=True, name=gpu.name, capability=gpu.capability, **cls._packages())


def main() -> int:
    gpus = detect()
    if not gpus:
        print("no GPU found: jobs run on the CPU")
    for g in gpus:
        print(json.dumps(asdict(g)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
