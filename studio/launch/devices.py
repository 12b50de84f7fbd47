"""Which GPUs this machine has, without importing torch in the calling process.

    python -m studio.launch.devices          prints the GPUs (or that there is none) as the device picker shows them

`detect()` asks `nvidia-smi` first; without it, a short `python -c` child asks torch, unless this is a Linux machine
without the device files through which torch reaches a GPU (then there is none, and no child is started). GPU numbers are the
ones nvidia-smi shows (PCI bus order): `launch.devices=0,1` sets CUDA_DEVICE_ORDER=PCI_BUS_ID for the child
so that the numbers mean the same GPUs there.
"""
from __future__ import annotations

import functools
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

    @property
    def label(self) -> str:
        free = f", {self.free_mib / 1024:.0f} GiB free" if self.free_mib is not None else ""
        return f"GPU {self.index}: {self.name} ({self.memory_mib / 1024:.0f} GiB{free})"


_SMI_QUERY = ["--query-gpu=index,name,memory.total,memory.free", "--format=csv,noheader,nounits"]

_TORCH_PROBE = """
import json, torch
out = []
if torch.cuda.is_available():
    for i in range(torch.cuda.device_count()):
        p = torch.cuda.get_device_properties(i)
        free = torch.cuda.mem_get_info(i)[0] // 2**20
        out.append({"index": i, "name": p.name, "memory_mib": p.total_memory // 2**20, "free_mib": free})
print(json.dumps(out))
"""


def parse_smi(text: str) -> list[GPU]:
    """The CSV lines of `nvidia-smi --query-gpu=index,name,memory.total,memory.free --format=csv,noheader,nounits`."""
    gpus = []
    for line in text.strip().splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) < 3 or not parts[0].isdigit():
            continue
        free = int(parts[3]) if len(parts) > 3 and parts[3].isdigit() else None
        mem = int(parts[2]) if parts[2].isdigit() else 0
        gpus.append(GPU(int(parts[0]), parts[1], mem, free))
    return gpus


def _from_smi(timeout: float) -> list[GPU] | None:
    exe = shutil.which("nvidia-smi")
    if not exe:
        return None
    try:
        res = subprocess.run([exe, *_SMI_QUERY], capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return parse_smi(res.stdout) if res.returncode == 0 else None


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


def main() -> int:
    gpus = detect()
    if not gpus:
        print("no GPU found: jobs run on the CPU")
    for g in gpus:
        print(json.dumps(asdict(g)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
