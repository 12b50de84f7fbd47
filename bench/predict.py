"""Prediction throughput of `studio eval` at several batch sizes: samples/s and generated tokens/s.

    .venv/bin/python bench/predict.py [--model default] [--dataset alpaca_demo] [--samples 64]
                                      [--max-new-tokens 64] [--batch-sizes 1,8,32] [--out bench/results/predict.json]

Runs the same code as the eval job (prompts sorted by length, left padding, greedy, stop at end of turn)
in one process on the model, and writes one JSON record with the figures per batch size.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path


def measure(overrides: list[str], batch_sizes, max_new_tokens: int):
    """Samples/s and generated tokens/s of the evaluate path at each batch size, for an eval spec's overrides.
    -> (rows, the model)."""
    from studio.evaluate import job as evaluate
    from studio import spec as specmod
    from studio.data.templates import Template

    spec = specmod.load(None, ["task=eval", *overrides])
    samples = evaluate.read_samples(spec)
    model, tok = evaluate.load(spec, evaluate.plan(spec)[0])
    template = Template(spec.model.template, tok)
    prompts = [evaluate.prompt_ids(s.messages, template, spec.data.cutoff_len) for s in samples]
    evaluate.generate(model, tok, template, prompts[:2], specmod.EvalSpec(batch_size=2, max_new_tokens=4), print)  # warm-up
    results = []
    for bs in batch_sizes:
        cfg = specmod.EvalSpec(batch_size=bs, max_new_tokens=max_new_tokens)
        t0 = time.perf_counter()
        _, tokens = evaluate.generate(model, tok, template, prompts, cfg, print)
        dt = time.perf_counter() - t0
        row = {"batch_size": bs, "samples": len(prompts), "seconds": round(dt, 2), "samples_per_second": round(len(prompts) / dt, 3),
               "generated_tokens": tokens, "generated_tokens_per_second": round(tokens / dt, 1)}
        print(json.dumps(row), flush=True)
        results.append(row)
    return results, model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="default")
    ap.add_argument("--dataset", default="alpaca_demo")
    ap.add_argument("--samples", type=int, default=64)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--batch-sizes", default="1,8,32")
    ap.add_argument("--out", default="bench/results/predict.json")
    args = ap.parse_args()

    import torch

    results, model = measure([f"model.name_or_path={args.model}", f"data.eval_dataset=[{args.dataset}]", f"data.max_samples={args.samples}"],
                             [int(x) for x in args.batch_sizes.split(",")], args.max_new_tokens)
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"cpu ({os.cpu_count()} cores, {torch.get_num_threads()} threads)"
    record = {"bench": "predict", "model": args.model, "dataset": args.dataset, "max_new_tokens": args.max_new_tokens,
              "dtype": str(next(model.parameters()).dtype), "device": device, "load_average": os.getloadavg(),
              "python": platform.python_version(), "torch": torch.__version__, "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
              "results": results}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
