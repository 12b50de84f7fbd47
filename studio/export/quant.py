"""k-quant GGUF files (q4_k_m, q5_k_m, q6_k) made by llama.cpp's own quantizer from the f16 GGUF file.

    report = quantize(export_dir / "model-f16.gguf", export_dir / "model-q4_k_m.gguf", "q4_k_m")
    report["fallback"]   # tensors llama.cpp could not k-quantize, with the type it used instead

k-quants pack rows in super-blocks of 256 values. A tensor whose rows are not a multiple of 256 cannot be
k-quantized; llama.cpp then falls back, per tensor, to a legacy type (q5_0, q5_1, q8_0 or f16). The file is
still complete and correct, only less compressed; the report lists each such tensor and its type. The
bindings come from llama-cpp-python (`pip install 'studio[gguf-runtime]'`).
"""
from __future__ import annotations

import os
from pathlib import Path

# llama.cpp's file types (enum llama_ftype); the mix of tensor types each uses is llama.cpp's own choice
KQUANTS = {"q4_k_m": 15, "q5_k_m": 17, "q6_k": 18}
SUPER_BLOCK = 256
# bytes per weight of each type for the disk-space check (bits per weight of llama.cpp's mixes, rounded up)
BYTES = {"q4_k_m": 0.62, "q5_k_m": 0.72, "q6_k": 0.83}


class QuantizeError(RuntimeError):
    """llama.cpp could not quantize the file (the message says which and why)."""


def available() -> bool:
    """Whether llama.cpp's quantizer can be called (llama-cpp-python installed)."""
    import importlib.util

    return importlib.util.find_spec("llama_cpp") is not None


def missing_message(types: list[str]) -> str:
    return (f"export.gguf: {', '.join(types)} are made by llama.cpp's quantizer, and llama-cpp-python is not installed: "
            "pip install 'studio[gguf-runtime]' (or `make test`), or choose f16 / q8_0")


def check(types: list[str]) -> None:
    """Refuse k-quants before a job starts when llama.cpp's quantizer is not installed (a SpecError)."""
    from studio.spec import SpecError

    wanted = [q for q in types if q in KQUANTS]
    if wanted and not available():
        raise SpecError(missing_message(wanted))


def quantize(src: str | Path, out: str | Path, qtype: str, nthread: int | None = None) -> dict:
    """Quantize the f16 GGUF `src` into `out` as `qtype`; returns what llama.cpp wrote (types, fallbacks, size)."""
    import ctypes

    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # llama.cpp's OpenMP threads must not spin on a busy machine
    try:
        import llama_cpp
    except ImportError:
        raise QuantizeError(missing_message([qtype])) from None
    llama_cpp.llama_backend_init()
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = KQUANTS[qtype]
    params.nthread = nthread or min(4, os.cpu_count() or 1)
    rc = llama_cpp.llama_model_quantize(str(src).encode(), str(out).encode(), ctypes.byref(params))
    if rc != 0 or not Path(out).exists():
        raise QuantizeError(f"llama.cpp could not quantize {Path(src).name} to {qtype} (return code {rc}); "
                            "its log is in the job's output")
    return describe(out)


def reader(path: str | Path):
    """gguf's GGUFReader over a plain array view of the file's memory map: the reader slices the file once per value,
    and a slice of a numpy memmap costs ~3x a plain array's (3.2 -> 1.1 CPU-s for a file with a 49k-token vocabulary)."""
    import gguf
    import numpy as np

    class Reader(gguf.GGUFReader):
        def _get(self, offset, dtype, count=1, override_order=None):
            if type(self.data) is not np.ndarray:
                self.data = self.data.view(np.ndarray)
            return super()._get(offset, dtype, count, override_order)

    return Reader(path)


def describe(path: str | Path) -> dict:
    """Tensor types of a GGUF file, and the 2-D tensors that are neither k-quants nor float (the fallbacks)."""
    counts: dict[str, int] = {}
    fallback = {}
    for t in reader(path).tensors:
        name = t.tensor_type.name
        counts[name] = counts.get(name, 0) + 1
        cols = int(t.shape[0])  # GGUF lists the row length first
        if len(t.shape) > 1 and not name.endswith("_K") and name not in ("F32",):
            why = f"rows of {cols} values, not a multiple of {SUPER_BLOCK}" if cols % SUPER_BLOCK else "llama.cpp's choice"
            fallback[t.name] = f"{name} ({why})"
    return {"tensor_types": dict(sorted(counts.items())), "fallback": fallback, "bytes": Path(path).stat().st_size}


def summary(name: str, report: dict) -> str:
    """One line for people: the tensors that could not be k-quantized, or none."""
    fb = report.get("fallback") or {}
    if not fb:
        return f"{name}: every matrix k-quantized ({', '.join(f'{k} {v}' for k, v in report['tensor_types'].items())})"
    kinds = sorted({v.split(" ")[0] for v in fb.values()})
    return (f"{name}: {len(fb)} tensor(s) could not be k-quantized (rows not a multiple of {SUPER_BLOCK}); llama.cpp wrote them "
            f"as {', '.join(kinds)}: {', '.join(list(fb)[:4])}{' ...' if len(fb) > 4 else ''}")
