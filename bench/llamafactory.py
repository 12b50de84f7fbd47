"""The studio against LLaMA-Factory on the same job, each with its own defaults otherwise, back to back.

    .venv/bin/python bench/llamafactory.py [--lf-venv /work/lf-venv] [--rounds 2] [--out bench/results/llamafactory.json]

The job: LoRA r8 on all linear layers, SFT of the default model (SmolLM2-135M-Instruct, the converted safetensors
folder that `models.default_path()` gives), 64 examples of alpaca_en_demo (LLaMA-Factory's demo data, read in
place), cutoff 256, batch 4 x accumulation 2, lr 1e-4, cosine, one epoch, fp32 on the CPU. LLaMA-Factory runs
from its own venv (`python3 -m venv /work/lf-venv && /work/lf-venv/bin/pip install -c constraints.txt
torch==2.13.0 llamafactory==0.9.5`) through `llamafactory-cli train CONFIG.yaml`; the studio through
`studio train`, once with its defaults and once with `data.group_by_length=false` (the defaults before length
grouping). torchaudio has no release for torch 2.13 on PyPI (2.11.1 does not load against it) and torchvision's
wheel fails the same way: install LLaMA-Factory, then `pip uninstall torchvision torchaudio`; this script puts an
empty `torchaudio` module on LLaMA-Factory's path (it imports it at the top of its multimodal plugin; this
text-only job calls none of it). Each round runs all three back to back; the figure compared is the trainer's own `train_runtime`
(both use transformers' Trainer), and the loss of every step is kept to compare what was learned.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
DATA = ROOT.parent / "shared" / "data" / "llamafactory"
SAMPLES, CUTOFF, LR = 64, 256, 1e-4


def lf_config(model: Path, out: Path, template: str) -> dict:
    return {"model_name_or_path": str(model), "stage": "sft", "do_train": True, "finetuning_type": "lora", "lora_rank": 8,
            "lora_target": "all", "dataset": "alpaca_en_demo", "dataset_dir": str(DATA), "template": template,
            "cutoff_len": CUTOFF, "max_samples": SAMPLES, "overwrite_cache": True, "output_dir": str(out),
            "logging_steps": 1, "save_strategy": "no", "report_to": "none", "per_device_train_batch_size": 4,
            "gradient_accumulation_steps": 2, "learning_rate": LR, "num_train_epochs": 1.0, "lr_scheduler_type": "cosine"}


def run_lf(venv: Path, model: Path, tmp: Path, template: str) -> dict:
    out = tmp / "lf"
    cfg = tmp / "lf.yaml"
    cfg.write_text(yaml.safe_dump(lf_config(model, out, template)))
    (tmp / "shim" / "torchaudio").mkdir(parents=True, exist_ok=True)
    (tmp / "shim" / "torchaudio" / "__init__.py").write_text("")
    t0 = time.time()
    r = subprocess.run([str(venv / "bin" / "llamafactory-cli"), "train", str(cfg)], capture_output=True, text=True,
                       env={"PATH": f"{venv / 'bin'}:/usr/bin:/bin", "HF_HUB_OFFLINE": "1", "DISABLE_VERSION_CHECK": "1",
                            "PYTHONPATH": str(tmp / "shim"),
                            "HOME": str(Path.home()), "TOKENIZERS_PARALLELISM": "false"})
    wall = time.time() - t0
    if r.returncode != 0:
        raise SystemExit("llamafactory-cli failed:\n" + r.stdout[-3000:] + r.stderr[-3000:])
    metrics = json.loads((out / "train_results.json").read_text())
    logs = [json.loads(line) for line in (out / "trainer_log.jsonl").read_text().splitlines() if line.strip()]
    return {"train_runtime_s": metrics["train_runtime"], "wall_s": wall, "steps": logs[-1]["current_steps"],
            "losses": [e["loss"] for e in logs if "loss" in e]}


def run_studio(tmp: Path, *extra: str) -> dict:
    from studio.run import events as ev

    out = tmp / ("studio" + "".join(x.replace("=", "_").replace(".", "_") for x in extra))
    args = [f"output_dir={out}", f"data.dataset_dir={DATA}", "data.dataset=[alpaca_en_demo]", f"data.max_samples={SAMPLES}",
            f"data.cutoff_len={CUTOFF}", f"train.learning_rate={LR}", "train.num_train_epochs=1", "train.max_steps=-1",
            "train.save_steps=100000", *extra]
    t0 = time.time()
    spec = tmp / "studio.yaml"
    spec.write_text("task: train\n")  # the spec's defaults, and the job's fields as overrides
    r = subprocess.run([sys.executable, "-m", "studio", "train", str(spec), *args], cwd=ROOT, capture_output=True, text=True)
    wall = time.time() - t0
    if r.returncode != 0:
        raise SystemExit("studio train failed:\n" + r.stdout[-3000:] + r.stderr[-3000:])
    events = ev.read_all(out)
    done = ev.final(events)
    return {"train_runtime_s": done["train_runtime_s"], "wall_s": wall, "steps": done["step"],
            "losses": [e["loss"] for e in events if e["event"] == "log"]}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--lf-venv", default="/work/lf-venv")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--template", default="smollm2", help="LLaMA-Factory's template for the model (SmolLM2 chat format, as the tokenizer's own)")
    p.add_argument("--out", default=str(ROOT / "bench" / "results" / "llamafactory.json"))
    a = p.parse_args()
    from studio.model import models

    model = models.default_path()
    results = {"job": f"LoRA r8 all-linear SFT, default model, {SAMPLES} x alpaca_en_demo, cutoff {CUTOFF}, batch 4 x 2, "
                      f"lr {LR}, cosine, 1 epoch", "rounds": []}
    for i in range(a.rounds):
        with tempfile.TemporaryDirectory() as tmp:
            tmp = Path(tmp)
            rnd = {"llamafactory": run_lf(Path(a.lf_venv), model, tmp, a.template),
                   "studio": run_studio(tmp),
                   "studio_ungrouped": run_studio(tmp, "data.group_by_length=false")}
        rnd["speedup"] = rnd["llamafactory"]["train_runtime_s"] / rnd["studio"]["train_runtime_s"]
        rnd["speedup_ungrouped"] = rnd["llamafactory"]["train_runtime_s"] / rnd["studio_ungrouped"]["train_runtime_s"]
        results["rounds"].append(rnd)
        print(f"round {i + 1}: " + ", ".join(f"{k} {v['train_runtime_s']:.1f}s" for k, v in rnd.items() if isinstance(v, dict))
              + f"; LLaMA-Factory / studio {rnd['speedup']:.2f}x (ungrouped {rnd['speedup_ungrouped']:.2f}x)", flush=True)
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(results, indent=2))
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
