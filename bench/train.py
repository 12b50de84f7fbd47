"""Training throughput of the studio against the ceiling: a minimal PyTorch + PEFT loop on the same token batches.

    .venv/bin/python bench/train.py [--steps 8] [--samples 256] [--out bench/results/train.json]

For packing off and on: runs `studio train` (the real CLI and child process) on alpaca_en_demo with the default
model and LoRA (cutoff 512, batch 4 x accumulation 2), reads its events; replays the trainer's own batches to
count processed, real and trained tokens (padding fraction); then runs the same batches through a hand-written
loop (forward, backward, optimizer step, nothing else) and reports studio / ceiling. Steady state: the first
optimizer step of each is left out.
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
DATA = ROOT.parent / "shared" / "data" / "llamafactory"


def overrides(out: Path, packing: bool, steps: int, samples: int, data_dir: Path, dataset: str) -> list[str]:
    return [f"output_dir={out}", f"data.dataset_dir={data_dir}", f"data.dataset=[{dataset}]", f"data.max_samples={samples}",
            "data.cutoff_len=512", f"data.packing={str(packing).lower()}", "train.per_device_train_batch_size=4",
            "train.gradient_accumulation_steps=2", f"train.max_steps={steps}", "train.save_steps=100000",
            "train.learning_rate=2e-4", "train.warmup_ratio=0", "train.num_train_epochs=1"]


def run_studio(args: list[str]) -> dict:
    from studio.run import events as ev

    t0 = time.time()
    r = subprocess.run([sys.executable, "-m", "studio", "train", str(ROOT / "examples" / "identity_lora.yaml"), *args],
                       cwd=ROOT, capture_output=True, text=True)
    wall = time.time() - t0
    if r.returncode != 0:
        raise SystemExit(r.stdout[-2000:] + r.stderr[-2000:])
    out = Path(next(a.split("=", 1)[1] for a in args if a.startswith("output_dir=")))
    logs = [e for e in ev.read_all(out) if e["event"] == "log"]
    first, last = logs[0], logs[-1]
    dt = last["elapsed_s"] - first["elapsed_s"]
    return {"steps": last["step"], "tokens_per_second": (last["tokens_seen"] - first["tokens_seen"]) / dt,
            "seconds_per_step": dt / (last["step"] - first["step"]), "final_loss": last["loss"], "wall_s": wall,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}


def trainer_batches(args: list[str], steps: int):
    """The exact micro-batches the studio's trainer feeds the model, built by the studio's own code."""
    from trl import SFTTrainer

    from studio.model import methods
    from studio.model import models
    from studio import spec as specmod
    from studio.data import encode
    from studio.data.templates import Template
    from studio.train.stages.sft import sft_config

    spec = specmod.load(ROOT / "examples" / "identity_lora.yaml", args)
    tok = models.load_tokenizer(spec.model.name_or_path)
    train, _, _ = encode.build(spec, tok, Template(spec.model.template, tok))
    model = models.load_model(spec.model, "fp32")
    model.config.use_cache = False
    model = methods.apply(spec, model)
    trainer = SFTTrainer(model=model, args=sft_config(spec, Path(tempfile.mkdtemp()), False), train_dataset=train, processing_class=tok)
    batches = []
    for b in trainer.get_train_dataloader():
        batches.append({k: v for k, v in b.items() if k in ("input_ids", "labels", "attention_mask", "position_ids")})
        if len(batches) == steps * spec.train.gradient_accumulation_steps:
            break
    return spec, model, batches


def count(batches) -> dict:
    processed = sum(b["input_ids"].numel() for b in batches)
    real = sum(int(b["attention_mask"].sum()) if "attention_mask" in b else b["input_ids"].numel() for b in batches)
    trained = sum(int((b["labels"][:, 1:] != -100).sum()) for b in batches)
    return {"processed_tokens": processed, "real_tokens": real, "trained_tokens": trained,
            "padding_fraction": 1 - real / processed}


def ceiling(model, batches, accum: int, lr: float) -> dict:
    """forward, backward, optimizer step: nothing else."""
    import torch

    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    times, tokens = [], []
    for s in range(0, len(batches), accum):
        group = batches[s:s + accum]
        t0 = time.perf_counter()
        for b in group:
            (model(**b, use_cache=False).loss / accum).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - t0)
        tokens.append(sum(int(b["attention_mask"].sum()) if "attention_mask" in b else b["input_ids"].numel() for b in group))
    return {"tokens_per_second": sum(tokens[1:]) / sum(times[1:]), "seconds_per_step": sum(times[1:]) / len(times[1:])}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--samples", type=int, default=256)
    p.add_argument("--out", default=str(ROOT / "bench" / "results" / "train.json"))
    a = p.parse_args()
    data_dir, dataset = (DATA, "alpaca_en_demo") if DATA.exists() else (ROOT / "data", "alpaca_demo")
    results = {"dataset": dataset, "samples": a.samples, "steps": a.steps, "batch": "4 x 2", "cutoff_len": 512, "runs": {}}
    for packing in (False, True):
        with tempfile.TemporaryDirectory() as tmp:
            args = overrides(Path(tmp) / "run", packing, a.steps, a.samples, data_dir, dataset)
            studio = run_studio(args)
            spec, model, batches = trainer_batches(args, a.steps)
            counts = count(batches)
            ceil = ceiling(model, batches, spec.train.gradient_accumulation_steps, spec.train.learning_rate)
        key = "packing" if packing else "padding"
        results["runs"][key] = {"studio": studio, "ceiling": ceil, **counts,
                                "studio_over_ceiling": studio["tokens_per_second"] / ceil["tokens_per_second"],
                                "trained_tokens_per_second": studio["tokens_per_second"] * counts["trained_tokens"] / counts["real_tokens"]}
        print(key, json.dumps(results["runs"][key], indent=1), flush=True)
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(results, indent=2))
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
