"""Length-grouped batches against random ones on the LLaMA-Factory comparison job, interleaved in one process.

    .venv/bin/python bench/group_by_length.py [--out bench/results/group_by_length.json]

The job of bench/llamafactory.py (LoRA r8, default model, 64 x alpaca_en_demo, cutoff 256, batch 4 x 2, lr 1e-4,
cosine, one epoch). The micro-batches come from the studio trainer's own data loader, once with the default
`data.group_by_length=true` and once with false; two copies of the same initial LoRA model train on them with
forward, backward and an AdamW step, alternating optimizer steps (grouped, random, grouped, ...), so that a
loaded machine slows both alike. Reports processed positions, padding, seconds and the loss of each step.
"""
from __future__ import annotations

import argparse
import copy
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
DATA = ROOT.parent / "shared" / "data" / "llamafactory"


def batches(grouped: bool):
    from trl import SFTTrainer

    from studio.model import methods
    from studio.model import models
    from studio import spec as specmod
    from studio.data import encode
    from studio.data.templates import Template
    from studio.train.stages.sft import sft_config

    spec = specmod.load(None, [f"data.dataset_dir={DATA}", "data.dataset=[alpaca_en_demo]", "data.max_samples=64",
                               "data.cutoff_len=256", "train.learning_rate=1e-4", "train.num_train_epochs=1",
                               f"data.group_by_length={str(grouped).lower()}"])
    tok = models.load_tokenizer(spec.model.name_or_path)
    train, _, _ = encode.build(spec, tok, Template(spec.model.template, tok))
    from transformers import set_seed

    set_seed(42)
    model = methods.apply(spec, models.load_model(spec.model, "fp32"))
    model.config.use_cache = False
    trainer = SFTTrainer(model=model, args=sft_config(spec, Path(tempfile.mkdtemp()), False), train_dataset=train, processing_class=tok)
    return model, [dict(b) for b in trainer.get_train_dataloader()]


def main() -> None:
    import torch

    p = argparse.ArgumentParser()
    p.add_argument("--out", default=str(ROOT / "bench" / "results" / "group_by_length.json"))
    p.add_argument("--threads", type=int, default=None, help="torch threads (1 on a machine other jobs keep busy)")
    a = p.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    model, grouped = batches(True)
    _, plain = batches(False)
    runs = {}
    for name, bs in (("grouped", grouped), ("random", plain)):
        m = copy.deepcopy(model).train()
        opt = torch.optim.AdamW([q for q in m.parameters() if q.requires_grad], lr=1e-4)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s, n=len(bs) // 2: 0.5 * (1 + __import__("math").cos(__import__("math").pi * s / n)))
        runs[name] = {"m": m, "opt": opt, "sched": sched, "batches": bs, "times": [], "losses": [],
                      "positions": sum(b["input_ids"].numel() for b in bs), "real": sum(int(b["attention_mask"].sum()) for b in bs)}
    steps = len(grouped) // 2
    print(f"{len(grouped)} and {len(plain)} micro-batches; positions {runs['grouped']['positions']} grouped, "
          f"{runs['random']['positions']} random", flush=True)
    for s in range(steps):
        for name, r in runs.items():
            group = r["batches"][2 * s:2 * s + 2]
            items = sum(int((b["labels"][:, 1:] != -100).sum()) for b in group)
            t0 = time.perf_counter()
            loss_sum = 0.0
            for b in group:
                out = r["m"](**b, use_cache=False)
                n = int((b["labels"][:, 1:] != -100).sum())
                (out.loss * n / items).backward()
                loss_sum += out.loss.item() * n / items
            torch.nn.utils.clip_grad_norm_([q for q in r["m"].parameters() if q.requires_grad], 1.0)
            r["opt"].step()
            r["sched"].step()
            r["opt"].zero_grad(set_to_none=True)
            r["times"].append(time.perf_counter() - t0)
            r["losses"].append(round(loss_sum, 4))
            print(f"step {s + 1}/{steps} {name}: {r['times'][-1]:.1f}s loss {loss_sum:.4f}", flush=True)
    result = {name: {"seconds": round(sum(r["times"]), 2), "positions": r["positions"], "real_tokens": r["real"],
                     "padding": round(1 - r["real"] / r["positions"], 4), "losses": r["losses"]} for name, r in runs.items()}
    result["speedup"] = round(result["random"]["seconds"] / result["grouped"]["seconds"], 3)
    print(json.dumps(result, indent=1))
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
