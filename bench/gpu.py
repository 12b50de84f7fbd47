"""The GPU figures: MFU of LoRA SFT on a ~0.5B model in bf16, packing off and on, against a minimal loop, and
prediction at batch 1, 8 and 32.

    python bench/gpu.py --tokenizer DIR [--data DIR] [--steps 30] [--out bench/results/gpu.json]

A GPU server often has no route to a model hub, so the model is made here: a Llama-shaped decoder of ~0.5B
parameters (hidden 1024, 28 layers, 16 heads with 4 key/value heads, MLP 4608, tied embeddings) in bf16 with
random weights, on the tokenizer in DIR (the default model's). Throughput does not depend on the weights' values.
Training runs the real `studio train` (child process, events) on alpaca_en_demo (cutoff 2048, batch 8, LoRA r=8
on all linear layers); the minimal loop replays the trainer's own batches (forward, backward, step). MFU counts
6 x parameters FLOPs per real token against the GPU's dense bf16 peak (989 TFLOP/s for an H100 or H200 SXM);
LoRA skips the weight gradients of the frozen weights, so the hardware does about 4/6 of that work. Prediction
runs the evaluate path on 64 prompts, 64 new tokens (random weights never stop early: every row runs to 64).
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
PEAK = {"H100": 989e12, "H200": 989e12, "A100": 312e12}


def make_model(tokenizer_dir: Path, out: Path) -> int:
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=1024, intermediate_size=4608, num_hidden_layers=28,
                      num_attention_heads=16, num_key_value_heads=4, max_position_embeddings=4096, rope_theta=100000.0,
                      tie_word_embeddings=True, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                      pad_token_id=tok.pad_token_id)
    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg).to(torch.bfloat16)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return sum(p.numel() for p in model.parameters())


def overrides(model: Path, data: Path, out: Path, packing: bool, steps: int) -> list[str]:
    return [f"output_dir={out}", f"model.name_or_path={model}", f"data.dataset_dir={data}", "data.dataset=[alpaca_en_demo]",
            "data.cutoff_len=2048", f"data.packing={str(packing).lower()}", "train.compute_dtype=bf16",
            "train.per_device_train_batch_size=8", "train.gradient_accumulation_steps=1", f"train.max_steps={steps}",
            "train.save_steps=100000", "train.learning_rate=1e-4", "train.warmup_ratio=0", "train.num_train_epochs=1"]


def studio_run(args: list[str]) -> dict:
    from studio.run import events as ev

    r = subprocess.run([sys.executable, "-m", "studio", "train", str(ROOT / "examples" / "identity_lora.yaml"), *args],
                       cwd=ROOT, capture_output=True, text=True)
    out = Path(next(a.split("=", 1)[1] for a in args if a.startswith("output_dir=")))
    if r.returncode != 0:
        raise SystemExit(r.stdout[-3000:] + r.stderr[-3000:] + (out / "output.log").read_text()[-3000:])
    events = ev.read_all(out)
    logs = [e for e in events if e["event"] == "log"]
    first, last = logs[2], logs[-1]  # steady state: the first steps warm up kernels and the allocator
    dt = last["elapsed_s"] - first["elapsed_s"]
    done = ev.final(events)
    return {"tokens_per_second": (last["tokens_seen"] - first["tokens_seen"]) / dt,
            "seconds_per_step": dt / (last["step"] - first["step"]), "final_loss": last["loss"],
            "peak_gpu_mb": done.get("peak_gpu_mb")}


def ceiling(args: list[str], steps: int) -> dict:
    """The same micro-batches through forward, backward and an optimizer step, nothing else."""
    import torch
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
    model = methods.apply(spec, models.load_model(spec.model, "bf16").cuda())
    model.config.use_cache = False
    trainer = SFTTrainer(model=model, args=sft_config(spec, Path(tempfile.mkdtemp()), False), train_dataset=train, processing_class=tok)
    from studio.hardware import Hardware
    from studio.model import plan

    if plan.plan(spec, Hardware.detect()).packed_rows:  # the batches studio train makes: packed rows, not one giant row
        from studio.data.packed_rows import use_rows

        use_rows(trainer)
    batches = []
    for b in trainer.get_train_dataloader():
        keep = ("input_ids", "labels", "attention_mask", "position_ids", "cu_seq_lens_q", "cu_seq_lens_k", "max_length_q", "max_length_k")
        batches.append({k: v.cuda() if hasattr(v, "cuda") else v for k, v in b.items() if k in keep})  # varlen boundaries too
        if len(batches) == steps:
            break
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    model.train()
    times, tokens = [], []
    for b in batches:
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        model(**b, use_cache=False).loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
        tokens.append(int(b["attention_mask"].sum()) if "attention_mask" in b else b["input_ids"].numel())
    processed = sum(b["input_ids"].numel() for b in batches)
    return {"tokens_per_second": sum(tokens[2:]) / sum(times[2:]), "padding_fraction": 1 - sum(tokens) / processed}


def predict(model_dir: Path, data: Path) -> list[dict]:
    from predict import measure

    rows, model = measure([f"model.name_or_path={model_dir}", f"data.dataset_dir={data}", "data.eval_dataset=[alpaca_en_demo]",
                           "data.max_samples=64", "train.compute_dtype=bf16"], (1, 8, 32), 64)
    return [{**r, "dtype": str(next(model.parameters()).dtype)} for r in rows]


def main() -> None:
    import torch

    p = argparse.ArgumentParser()
    p.add_argument("--tokenizer", required=True)
    p.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "llamafactory"))
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--out", default=str(ROOT / "bench" / "results" / "gpu.json"))
    a = p.parse_args()
    name = torch.cuda.get_device_name(0)
    peak = next((v for k, v in PEAK.items() if k in name), None)
    work = Path(tempfile.mkdtemp())
    model_dir = work / "model-0.5b"
    params = make_model(Path(a.tokenizer), model_dir)
    result = {"device": name, "peak_flops": peak, "params": params, "torch": torch.__version__, "runs": {}}
    print(f"{name}: model of {params / 1e6:.0f}M parameters", flush=True)
    for packing in (False, True):
        args = overrides(model_dir, Path(a.data), work / f"run-{packing}", packing, a.steps)
        studio = studio_run(args)
        ceil = ceiling(args, a.steps)
        row = {"studio": studio, "ceiling": ceil, "studio_over_ceiling": studio["tokens_per_second"] / ceil["tokens_per_second"]}
        if peak:
            row["mfu_6n"] = studio["tokens_per_second"] * 6 * params / peak
            row["ceiling_mfu_6n"] = ceil["tokens_per_second"] * 6 * params / peak
        result["runs"]["packing" if packing else "padding"] = row
        print(json.dumps(row), flush=True)
    result["predict"] = predict(model_dir, Path(a.data))
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(result, indent=2))
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
