"""Every GPU path once, through the real `studio` CLI, in one table: pass/fail and a figure per path.

    python bench/gpu_check.py                 on a machine with one CUDA GPU (~8 minutes on an H100/H200)
    python bench/gpu_check.py --dry-run       anywhere: every path with the exact command it runs
    make gpu-check

No network: the models are built here from configs (Llama-shaped, random weights, the default model's tokenizer,
as bench/gpu.py does); the data is the repository's alpaca_demo repeated. Results: the table on stdout and
in --out (Markdown) with the JSON beside it. A path fails with the end of its log; the others still run.
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
PY = sys.executable
PEAK = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L40S": 362e12}
# name -> (hidden, intermediate, layers, heads, kv heads): Llama-shaped with the default model's 49k vocabulary
SHAPES = {"0.5b": (1024, 4608, 28, 16, 4), "1.5b": (2048, 8192, 22, 32, 8)}
STEPS = 12


def train_args(w: Path, name: str, model: str = "0.5b", cutoff: int = 1024, *extra: str, steps: int = STEPS) -> list[str]:
    return [PY, "-m", "studio", "train", str(w / "job.yaml"), f"output_dir={w / 'runs' / name}",
            f"model.name_or_path={w / ('model-' + model)}", f"data.dataset_dir={w / 'data'}", "data.dataset=[alpaca_x]",
            f"data.cutoff_len={cutoff}", "train.compute_dtype=bf16", "train.per_device_train_batch_size=4",
            "train.gradient_accumulation_steps=1", f"train.max_steps={steps}", "train.save_steps=6", "train.learning_rate=1e-4",
            *extra]


def paths(w: Path) -> list[dict]:
    """Each path: its name, the commands it runs (in order), and what it reads to judge them."""
    r = w / "runs"
    lora = r / "lora_packed"
    ev_args = lambda b: [PY, "-m", "studio", "eval", f"output_dir={r / f'eval_b{b}'}", f"model.name_or_path={w / 'model-0.5b'}",  # noqa: E731
                         f"model.adapter={lora}", f"data.dataset_dir={w / 'data'}", "data.eval_dataset=[alpaca_demo]",
                         "data.max_samples=64", f"eval.batch_size={b}", "eval.max_new_tokens=64", "eval.compute_loss=false",
                         "train.compute_dtype=bf16"]
    return [
        {"name": "LoRA bf16, padded (grouped by length)", "run": "lora_padded", "cmds": [train_args(w, "lora_padded")]},
        {"name": "LoRA bf16, packed", "run": "lora_packed", "cmds": [train_args(w, "lora_packed", "0.5b", 1024, "data.packing=true")]},
        {"name": "QLoRA 4-bit", "run": "qlora4", "cmds": [train_args(w, "qlora4", "0.5b", 1024, "model.quantization_bit=4")]},
        {"name": "QLoRA 8-bit", "run": "qlora8", "cmds": [train_args(w, "qlora8", "0.5b", 1024, "model.quantization_bit=8")]},
        {"name": "full bf16", "run": "full", "cmds": [train_args(w, "full", "0.5b", 1024, "method.finetuning_type=full", "train.learning_rate=1e-5")]},
        {"name": "freeze (last 2 layers)", "run": "freeze", "cmds": [train_args(w, "freeze", "0.5b", 1024, "method.finetuning_type=freeze")]},
        {"name": "prompt-style (P-tuning v2)", "run": "ptuning", "cmds": [train_args(w, "ptuning", "0.5b", 1024, "method.finetuning_type=ptuning_v2")]},
        {"name": "DeepSpeed ZeRO-2, torchrun, 1 process (NCCL)", "run": "z2", "cmds": [train_args(w, "z2", "0.5b", 1024, "launch.deepspeed=z2")]},
        {"name": "DeepSpeed ZeRO-3, torchrun, 1 process (NCCL)", "run": "z3", "cmds": [train_args(w, "z3", "0.5b", 1024, "launch.deepspeed=z3")]},
        {"name": "resume from a checkpoint", "run": "lora_padded",
         "cmds": [train_args(w, "lora_padded", "0.5b", 1024, "train.resume_from_checkpoint=auto", steps=STEPS + 4)]},
        {"name": "Abort leaves no process", "run": "abort",
         "cmds": [train_args(w, "abort", "0.5b", 1024, "launch.deepspeed=z2", "--detach", steps=100000),
                  ["kill", "-TERM", "<pid of the job, after its step 3>"]]},
        {"name": "evaluate: batched generation, batch 1 vs 32", "run": "eval_b32", "cmds": [ev_args(1), ev_args(32)]},
        {"name": "chat streaming", "run": None,
         "cmds": [[PY, "-c", f"from studio.chat import ChatSession; s = ChatSession(); s.load(None, {str(lora)!r}, None); "
                             "print(sum(1 for _ in s.stream([], 'Hello')))"]]},
        {"name": "export: merge, verify, GGUF f16 of the GPU-trained adapter", "run": "export",
         "cmds": [[PY, "-m", "studio", "export", str(w / "export.yaml"), f"output_dir={r / 'export_job'}", f"model.name_or_path={w / 'model-0.5b'}",
                   f"model.adapter={lora}", f"export.export_dir={r / 'export'}", "export.gguf=[f16]", "export.verify=true"]]},
        {"name": "memory estimate vs measured peak (LoRA, QLoRA, full)", "run": None, "cmds": []},
        {"name": "MFU (6N), 0.5B, packed 4k rows, vs minimal loop", "run": "mfu_0.5b",
         "cmds": [train_args(w, "mfu_0.5b", "0.5b", 4096, "data.packing=true", "train.per_device_train_batch_size=1", steps=20)]},
        {"name": "MFU (6N), 1.5B, packed 4k rows, vs minimal loop", "run": "mfu_1.5b",
         "cmds": [train_args(w, "mfu_1.5b", "1.5b", 4096, "data.packing=true", "train.per_device_train_batch_size=1", steps=20)]},
    ]


# --- setup ---------------------------------------------------------------------------------------------------


def setup(w: Path) -> dict:
    """Models from configs, the data (alpaca_demo x 20), the spec files; -> parameter counts."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from studio.model import models

    tok = AutoTokenizer.from_pretrained(models.default_path())
    params = {}
    for name, (h, inter, layers, heads, kv) in SHAPES.items():
        out = w / f"model-{name}"
        cfg = LlamaConfig(vocab_size=len(tok), hidden_size=h, intermediate_size=inter, num_hidden_layers=layers, num_attention_heads=heads,
                          num_key_value_heads=kv, max_position_embeddings=8192, rope_theta=100000.0, tie_word_embeddings=True,
                          bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
        torch.manual_seed(0)
        with torch.device("cuda"):
            model = LlamaForCausalLM(cfg).to(torch.bfloat16)
        params[name] = sum(p.numel() for p in model.parameters())
        model.save_pretrained(out)
        tok.save_pretrained(out)
        del model
    data = w / "data"
    data.mkdir(parents=True, exist_ok=True)
    records = json.loads((ROOT / "data" / "alpaca_demo.json").read_text())
    (data / "alpaca_x.json").write_text(json.dumps([dict(r, instruction=f"{r['instruction']} ({i})") for i in range(20) for r in records]))
    (data / "alpaca_demo.json").write_text(json.dumps(records))
    (data / "dataset_info.json").write_text(json.dumps({"alpaca_x": {"file_name": "alpaca_x.json"},
                                                        "alpaca_demo": {"file_name": "alpaca_demo.json"}}))
    (w / "job.yaml").write_text("task: train\n")
    (w / "export.yaml").write_text("task: export\n")
    return params


# --- running and judging -------------------------------------------------------------------------------------


def sh(cmd: list[str], timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def final(run: Path) -> dict:
    from studio.run import events as ev

    return ev.final(ev.read_all(run)) or {}


def logs(run: Path) -> list[dict]:
    from studio.run import events as ev

    return [e for e in ev.read_all(run) if e["event"] == "log"]


def tps(run: Path) -> float:
    lg = logs(run)
    first, last = lg[min(2, len(lg) - 2)], lg[-1]
    return (last["tokens_seen"] - first["tokens_seen"]) / max(last["elapsed_s"] - first["elapsed_s"], 1e-9)


def train_ok(run: Path) -> tuple[bool, str]:
    done = final(run)
    lg = logs(run)
    ok = done.get("event") == "done" and lg and all(e["loss"] == e["loss"] for e in lg)
    fig = f"{tps(run):,.0f} tok/s, peak {done.get('peak_gpu_mb', 0) / 1024:.1f} GB, loss {lg[0]['loss']:.2f} -> {lg[-1]['loss']:.2f}" if ok else ""
    return bool(ok), fig or (done.get("message") or "no done event")[:200]


def check(p: dict, w: Path, params: dict, state: dict) -> tuple[bool, str]:
    r = w / "runs"
    name = p["name"]
    if name.startswith("Abort"):
        return abort(p["cmds"][0], r / "abort")
    if name.startswith("chat"):
        return chat(r / "lora_packed")
    if name.startswith("memory"):
        return memory(w, state)
    walls = []
    for cmd in p["cmds"]:
        t0 = time.time()
        res = sh(cmd)
        walls.append(time.time() - t0)
        if res.returncode != 0:
            return False, (res.stderr or res.stdout)[-300:].replace("\n", " ")
    if name.startswith("evaluate"):
        b1, b32 = (final(r / f"eval_b{b}") for b in (1, 32))
        ok = b1.get("event") == b32.get("event") == "done"
        return ok, f"64 prompts x 64 new tokens: batch 1 {walls[0]:.0f}s, batch 32 {walls[1]:.0f}s ({walls[0] / walls[1]:.1f}x, wall time with model load)"
    if name.startswith("export"):
        done = final(r / "export_job")
        gguf = list((r / "export").glob("*.gguf"))
        verify = json.loads((r / "export" / "verify.json").read_text()) if (r / "export" / "verify.json").exists() else {}
        return bool(gguf) and done.get("event") == "done", f"{len(gguf)} GGUF file(s); verify: {json.dumps(verify)[:150]}"
    if name.startswith("resume"):
        from studio.run import events as ev

        starts = [e for e in ev.read_all(r / "lora_padded") if e["event"] == "start"]
        ok = len(starts) >= 2 and starts[-1]["resumed_from"] == STEPS and final(r / "lora_padded").get("step") == STEPS + 4
        return ok, f"resumed from step {starts[-1].get('resumed_from')} to {final(r / 'lora_padded').get('step')}"
    ok, fig = train_ok(r / p["run"])
    if ok and name.startswith("MFU"):
        return mfu(p, w, params, ok, fig)
    if ok and name.startswith("LoRA bf16, packed"):
        ratio = tps(r / "lora_packed") / tps(r / "lora_padded")
        fig += f"; packed / padded {ratio:.2f}x"
    return ok, fig


def abort(cmd: list[str], run: Path) -> tuple[bool, str]:
    from studio.run import status as runs

    res = sh(cmd)
    if res.returncode != 0:
        return False, res.stderr[-300:]
    deadline = time.time() + 300
    while time.time() < deadline and not any(e["step"] >= 3 for e in logs(run)):
        time.sleep(0.5)
    job = runs.job_info(run)
    os.kill(job["pid"], signal.SIGTERM)
    deadline = time.time() + 120
    while time.time() < deadline and runs.group_alive(job["pgid"]):
        time.sleep(0.5)
    left = runs.group_alive(job["pgid"])
    return not left and final(run).get("event") == "aborted", f"{final(run).get('event')} at step {final(run).get('step')}; processes left: {left}"


def chat(run: Path) -> tuple[bool, str]:
    from studio.chat.session import ChatSession

    s = ChatSession()
    s.load(None, str(run), None)
    t0 = time.time()
    pieces, first = 0, None
    for _ in s.stream([], "Tell me about GPUs."):
        pieces += 1
        first = first or time.time() - t0
    s.unload()
    return pieces > 1, f"{pieces} pieces, first after {first or 0:.2f}s"


def memory(w: Path, state: dict) -> tuple[bool, str]:
    from studio.launch import estimate
    from studio import spec as specmod

    out, ok = [], True
    for run in ("lora_padded", "qlora4", "full"):
        done = final(w / "runs" / run)
        if not done.get("peak_gpu_mb"):
            return False, f"{run}: no peak_gpu_mb"
        est = estimate.estimate(specmod.load(w / "runs" / run / "spec.yaml"))
        ratio = est.total / (done["peak_gpu_mb"] * 2**20)
        ok &= 0.8 <= ratio <= 1.2
        out.append(f"{run} {ratio:.2f}")
    return ok, "estimate / peak: " + ", ".join(out)


def mfu(p: dict, w: Path, params: dict, ok: bool, fig: str) -> tuple[bool, str]:
    import torch

    from gpu import ceiling

    size = "1.5b" if "1.5B" in p["name"] else "0.5b"
    peak = next((v for k, v in PEAK.items() if k in torch.cuda.get_device_name(0)), None)
    args = p["cmds"][0][5:]  # the overrides
    ceil = ceiling(args, 20)
    studio = tps(w / "runs" / p["run"])
    n = params[size]
    text = f"{studio:,.0f} tok/s = {studio / ceil['tokens_per_second']:.2f} of the minimal loop"
    if peak:
        text += f", MFU {studio * 6 * n / peak:.1%} (loop {ceil['tokens_per_second'] * 6 * n / peak:.1%})"
    return ok, text


# --- main ------------------------------------------------------------------------------------------------------


def table(rows: list[tuple[str, str, str]]) -> str:
    return "\n".join(["| path | result | figure |", "|---|---|---|"] + [f"| {a} | {b} | {c} |" for a, b, c in rows])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dry-run", action="store_true", help="list every path with its exact commands; run nothing")
    ap.add_argument("--work", default=None, help="working folder (models, data, runs); default: a new temporary folder")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "gpu_check.md"))
    a = ap.parse_args(argv)
    w = Path(a.work or tempfile.mkdtemp(prefix="gpu-check-"))
    todo = paths(w)
    if a.dry_run:
        print(f"{len(todo)} GPU paths (working folder {w}; setup builds model-0.5b and model-1.5b from configs, data/alpaca_x):")
        for i, p in enumerate(todo, 1):
            print(f"\n{i:2}. {p['name']}")
            for c in p["cmds"] or [["(reads the peak_gpu_mb of lora_padded, qlora4 and full against studio.estimate)"]]:
                print("    " + (shlex.join(c) if len(c) > 1 else c[0]))
        return 0
    import torch

    if not torch.cuda.is_available():
        print("bench/gpu_check.py needs a CUDA GPU and this machine has none (torch.cuda.is_available() is False). "
              "Run it on a GPU server, or see every path and its command with --dry-run.", file=sys.stderr)
        return 2
    t0 = time.time()
    params = setup(w)
    rows, state = [], {}
    for p in todo:
        t = time.time()
        try:
            ok, fig = check(p, w, params, state)
        except Exception as e:  # one broken path must not hide the others
            ok, fig = False, f"{type(e).__name__}: {e}"[:300]
        rows.append((p["name"], "pass" if ok else "FAIL", fig.replace("|", "/")))
        print(f"{'pass' if ok else 'FAIL'}  {p['name']}: {fig}  ({time.time() - t:.0f}s)", flush=True)
    head = f"{torch.cuda.get_device_name(0)}, torch {torch.__version__}, {time.time() - t0:.0f}s in all"
    text = f"{head}\n\n{table(rows)}\n"
    print("\n" + text)
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(text)
    Path(a.out).with_suffix(".json").write_text(json.dumps({"device": head, "rows": rows}, indent=1))
    return 0 if all(r[1] == "pass" for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
