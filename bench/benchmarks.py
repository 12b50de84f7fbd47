"""Benchmark scoring (studio/evaluate/benchmarks.py, lm-eval) on the default model: seconds per task at several of
lm-eval's batch sizes, and what the base-score cache saves.

    .venv/bin/python bench/benchmarks.py [--model default] [--adapter runs/identity_lora] [--tasks studio_pack]
                                         [--batch-sizes 1,8,32] [--out bench/results/benchmarks.json]

Each batch size scores the base with an empty cache (a fresh folder), so every figure includes the model load;
then the same call again (the base read from the cache, no model loaded) and, with --adapter, base + adapter
(the base cached: only the adapter is scored).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, round(time.perf_counter() - t0, 2)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="default")
    ap.add_argument("--adapter", default=None)
    ap.add_argument("--tasks", default="studio_pack")
    ap.add_argument("--batch-sizes", default="1,8,32")
    ap.add_argument("--out", default="bench/results/benchmarks.json")
    args = ap.parse_args()
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

    import torch

    from studio.evaluate import benchmarks

    tasks = args.tasks.split(",")
    benchmarks.task_manager()  # lm-eval's task index, built once (seconds) and kept
    rows = []
    for bs in (int(x) for x in args.batch_sizes.split(",")):
        with tempfile.TemporaryDirectory() as cache:
            res, s = timed(lambda: benchmarks.score(args.model, None, tasks, batch_size=bs, apply_chat_template=True, cache_dir=cache))
            per = {t: e["seconds"] for t, e in res["models"]["base"].items()}
            row = {"batch_size": bs, "seconds": s, "load_seconds": res["settings"]["load_seconds"], "task_seconds": per}
            _, row["cached_seconds"] = timed(lambda: benchmarks.score(args.model, None, tasks, batch_size=bs, apply_chat_template=True,
                                                                      cache_dir=cache))
            if args.adapter:
                _, row["base_cached_plus_adapter_seconds"] = timed(lambda: benchmarks.score(
                    args.model, {"run": args.adapter}, tasks, batch_size=bs, apply_chat_template=True, cache_dir=cache))
        print(json.dumps(row), flush=True)
        rows.append(row)
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"cpu ({os.cpu_count()} cores, {torch.get_num_threads()} threads)"
    record = {"bench": "benchmarks", "model": args.model, "tasks": tasks, "adapter": args.adapter, "device": device,
              "python": platform.python_version(), "torch": torch.__version__, "load_average": os.getloadavg()[0], "results": rows}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(record, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
