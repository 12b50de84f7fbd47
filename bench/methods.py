"""Method comparison: every fine-tuning method on the default model and the identity data, through `studio train`.

    .venv/bin/python bench/methods.py [--steps 10] [--accum 2] [--only lora,full] [--out bench/results/methods.json]
    .venv/bin/python bench/methods.py --render A.json B.json     (one table from the rows of several partial runs)

Each method runs its example from examples/ (its own learning rate and options) for the same number of optimizer
steps on the same batches (identity, batch 4 x accumulation --accum, cutoff 256), as a real CLI run with a real child
process. From the run's events: trainable parameters (count and share), the child's peak resident memory (and
peak GPU memory on a GPU), training tokens per second (steady state: the first step is left out) and the loss at
the first and the last step. Writes the JSON and the table in docs/methods.md (between its table markers).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
DOC = ROOT / "docs" / "methods.md"
START, END = "<!-- methods-table:start -->", "<!-- methods-table:end -->"

# (row name, example spec, what it shows)
METHODS = [
    ("lora", "examples/identity_lora.yaml", "LoRA r=8 on all linear layers"),
    ("qlora", "examples/methods/qlora.yaml", "LoRA r=8 on a 4-bit NF4 base (double quant)"),
    ("adalora", "examples/methods/adalora.yaml", "AdaLoRA rank 12 -> 4"),
    ("ia3", "examples/methods/ia3.yaml", "IA3 on k, v, down"),
    ("prefix", "examples/methods/prefix.yaml", "prefix tuning, 16 tokens, MLP encoder"),
    ("ptuning_v2", "examples/methods/ptuning_v2.yaml", "P-tuning v2, 16 tokens"),
    ("prompt", "examples/methods/prompt.yaml", "prompt tuning, 16 tokens"),
    ("ptuning", "examples/methods/ptuning.yaml", "P-tuning, 16 tokens, MLP encoder"),
    ("freeze", "examples/methods/freeze.yaml", "last 4 layers + final norm"),
    ("full", "examples/methods/full.yaml", "every weight"),
    ("dora", "examples/methods/dora.yaml", "DoRA r=8"),
    ("rslora", "examples/methods/rslora.yaml", "rsLoRA r=32"),
    ("pissa", "examples/methods/pissa.yaml", "LoRA r=8, PiSSA init"),
    ("loraplus", "examples/methods/loraplus.yaml", "LoRA+ (B at 16x the rate of A)"),
    ("lora_layers", "examples/methods/lora_layers.yaml", "LoRA r=8 on the last 10 of 30 layers"),
]

# AdaLoRA's schedule (tinit warm-up + tfinal fixed steps) must fit into the few benchmark steps
EXTRA = {"adalora": ["method.adalora.tinit=1", "method.adalora.tfinal=1"]}


def run_one(name: str, example: str, steps: int, accum: int, root: Path) -> dict:
    from studio.run import events as ev
    from studio import spec as specmod

    out = root / name
    shutil.rmtree(out, ignore_errors=True)  # a fresh run folder: events of an earlier run would mix in
    over = [f"output_dir={out}", f"train.max_steps={steps}", "train.per_device_train_batch_size=4",
            f"train.gradient_accumulation_steps={accum}", "train.save_steps=100000", "train.logging_steps=1", "data.cutoff_len=256",
            f"data.dataset_dir={ROOT / 'data'}", "data.dataset=[identity]", *EXTRA.get(name, [])]
    t0 = time.time()
    r = subprocess.run([sys.executable, "-m", "studio", "train", str(ROOT / example), *over], cwd=ROOT, capture_output=True, text=True)
    wall = time.time() - t0
    events = ev.read_all(out)
    final = ev.final(events) or {}
    row = {"method": name, "example": example, "returncode": r.returncode, "final_event": final.get("event"), "wall_s": round(wall, 1),
           "cli_last_line": (r.stdout.strip().splitlines() or [""])[-1][:200]}
    if final.get("event") != "done":
        row["error"] = final.get("message") or (r.stderr[-500:] if r.stderr else "")
        return row
    spec = specmod.load(out / "spec.yaml")
    start = next(e for e in events if e["event"] == "start")
    logs = [e for e in events if e["event"] == "log" and e.get("loss") is not None]
    first, last = logs[0], logs[-1]
    steady = [e for e in logs if e["step"] > 1]
    a, b = (steady[0], steady[-1]) if len(steady) > 1 else (first, last)
    dt = b["elapsed_s"] - a["elapsed_s"]
    row.update(
        finetuning_type=spec.method.finetuning_type, learning_rate=spec.train.learning_rate,
        trainable_params=start["trainable_params"], total_params=start["total_params"],
        trainable_pct=round(100 * start["trainable_params"] / start["total_params"], 4),
        peak_rss_mb=final.get("peak_rss_mb"), peak_gpu_mb=final.get("peak_gpu_mb"),
        tokens_per_second=round((b["tokens_seen"] - a["tokens_seen"]) / dt, 1) if dt > 0 else None,
        seconds_per_step=round(dt / max(b["step"] - a["step"], 1), 2),
        first_loss=round(first["loss"], 4), last_loss=round(last["loss"], 4), steps=last["step"],
        adapter_mb=saved_mb(out),
    )
    return row


def fmt_params(n: int) -> str:
    return f"{n / 1e6:.2f} M" if n >= 1e6 else f"{n / 1e3:.1f} K"


def saved_mb(run_dir: Path) -> float | None:
    """Size of the safetensors a run saved (adapter/ or model/), in MiB."""
    for sub in ("adapter", "model"):
        if (run_dir / sub).is_dir():
            return round(sum(f.stat().st_size for f in (run_dir / sub).rglob("*.safetensors")) / 2**20, 4)
    return None


def fmt_size(mb: float) -> str:
    return f"{mb:.1f} MB" if mb >= 1 else f"{mb * 1024:.0f} KB"


def table(rows: list[dict], meta: dict) -> str:
    desc = {n: d for n, _, d in METHODS}
    lines = [f"Measured {meta['date']} on {meta['machine']} ({meta['cpus']} CPU cores, torch {meta['torch']}, "
             f"{'GPU ' + meta['gpu'] if meta['gpu'] else 'no GPU'}); {meta['steps']} optimizer steps of {4 * meta['accum']} examples each; "
             f"load average {meta['load_before']} before and {meta['load_after']} after (the CPU was shared"
             f"{'; ' + meta['note'] if meta.get('note') else ''}).", "",
             "| method | what trains | trainable | % of model | peak RSS | tokens/s | loss step 1 | loss step N | lr | saved | `studio train` |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        if r.get("final_event") != "done":
            lines.append(f"| {r['method']} | {desc.get(r['method'], '')} | | | | | | | | | **{r.get('final_event')}**: {r.get('error', '')[:80]} |")
            continue
        lines.append(
            f"| {r['method']} | {desc.get(r['method'], '')} | {fmt_params(r['trainable_params'])} | {r['trainable_pct']:.3f} | "
            f"{r['peak_rss_mb'] / 1024:.2f} GiB | {r['tokens_per_second']:.3g}{' (' + chr(97 + r['part']) + ')' if 'part' in r else ''} | "
            f"{r['first_loss']:.3f} | {r['last_loss']:.3f} | "
            f"{r['learning_rate']:g} | {fmt_size(r['adapter_mb'])} | {r['final_event']} ({r['wall_s']:.0f} s) |")
    return "\n".join(lines)


def write_doc(rows: list[dict], meta: dict) -> None:
    text = DOC.read_text(encoding="utf-8")
    i, j = text.index(START) + len(START), text.index(END)
    DOC.write_text(text[:i] + "\n" + table(rows, meta) + "\n" + text[j:], encoding="utf-8")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--accum", type=int, default=2, help="gradient accumulation steps (batch 4 each)")
    ap.add_argument("--render", nargs="*", help="write the doc table from these JSON results (rows in METHODS order) and exit")
    ap.add_argument("--only", default="", help="comma-separated method names (default: all)")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "methods.json"))
    ap.add_argument("--runs", default=str(ROOT / "runs" / "bench_methods"))
    ap.add_argument("--no-doc", action="store_true", help="do not rewrite the table in docs/methods.md")
    args = ap.parse_args()
    if args.render:
        parts = [json.loads(Path(f).read_text()) for f in args.render]
        by_name = {}
        for k, part in enumerate(parts):  # a later file's row replaces an earlier one of the same method
            for r in part["rows"]:
                by_name[r["method"]] = {**r, "part": k} if len(parts) > 1 else r
        meta = dict(parts[0]["meta"])
        meta["load_before"] = max(p["meta"]["load_before"] for p in parts)
        meta["load_after"] = max(p["meta"].get("load_after", 0) for p in parts)
        used = sorted({r.get("part", 0) for r in by_name.values()})
        meta["note"] = "" if len(parts) == 1 else "rows from several benchmark processes, some side by side; tokens/s marked with the process: " + "; ".join(
            f"{chr(97 + k)}: started {parts[k]['meta']['date']}, load {parts[k]['meta']['load_before']} -> "
            f"{parts[k]['meta'].get('load_after')}" for k in used)
        rows = [by_name[n] for n, _, _ in METHODS if n in by_name]
        for r in rows:  # sizes measured again from the run folders, where they still exist
            if r.get("final_event") == "done" and saved_mb(Path(args.runs) / r["method"]) is not None:
                r["adapter_mb"] = saved_mb(Path(args.runs) / r["method"])
        write_doc(rows, meta)
        print(table(rows, meta))
        return 0
    import torch

    only = {x for x in args.only.split(",") if x}
    cpuinfo = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    model = next((x.split(":", 1)[1].strip() for x in cpuinfo.splitlines() if x.startswith("model name")), platform.machine())
    meta = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "machine": model,
            "cpus": os.cpu_count(), "torch": torch.__version__, "steps": args.steps, "accum": args.accum,
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "", "load_before": round(os.getloadavg()[0], 1)}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    # --only reruns some methods and keeps the other rows of an earlier run with the same number of steps
    old = json.loads(out.read_text()) if only and out.exists() else {"meta": {}, "rows": []}
    same = old["meta"].get("steps") == args.steps and old["meta"].get("accum") == args.accum
    kept = {r["method"]: r for r in old["rows"]} if same else {}
    rows = []
    for name, example, _ in METHODS:
        if only and name not in only:
            if name in kept:
                rows.append(kept[name])
            continue
        row = run_one(name, example, args.steps, args.accum, Path(args.runs))
        print(json.dumps(row), flush=True)
        rows.append(row)
        meta["load_after"] = round(os.getloadavg()[0], 1)
        out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))  # after each row: a partial run keeps its rows
        if not args.no_doc:
            write_doc(rows, meta)
    print(table(rows, meta))
    return 0 if all(r.get("final_event") == "done" for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
