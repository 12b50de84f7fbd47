"""The model card (README.md) of an export: base model, data, method, hyperparameters, final metrics,
the verification result and how to run the files."""
from __future__ import annotations

import json
from pathlib import Path

from studio.run import events as ev


def final_metrics(run_dir: Path | None) -> dict:
    """The training run's `done` event (loss, steps) and metrics.json (an evaluation), when present."""
    out: dict = {}
    if not run_dir:
        return out
    done = ev.final(ev.read_all(run_dir))
    if done and done.get("event") == "done":
        out.update({k: v for k, v in done.items() if k not in ("event", "t", "path") and isinstance(v, (int, float))})
    mfile = run_dir / "metrics.json"
    if mfile.exists():
        try:
            data = json.loads(mfile.read_text())
            out.update({f"eval/{k}": v for k, v in data.items() if isinstance(v, (int, float))})
        except (OSError, json.JSONDecodeError):
            pass
    return out


def _fmt(v) -> str:
    return f"{v:.6g}" if isinstance(v, float) else str(v)


def card(name: str, spec, source, run_dir: Path | None, result: dict) -> str:
    run = source.run_spec or {}
    model, data, method, train = (run.get(k) or {} for k in ("model", "data", "method", "train"))
    ft = method.get("finetuning_type") or ("full" if source.kind == "full" else source.peft_type.lower())
    base = model.get("name_or_path") or source.base
    base_note = " (the embedded SmolLM2-135M-Instruct)" if base == "default" else ""
    lines = [f"# {name}", "",
             f"Fine-tuned from **{base}**{base_note} with **{ft}**" + (f" ({method.get('stage', 'sft')})" if method else "") + ".", ""]
    if model.get("quantization_bit"):
        lines += [f"Trained as QLoRA on a {model['quantization_bit']}-bit base; the adapter was merged into the base "
                  "weights loaded in full precision (never into quantized weights).", ""]
    lines += ["| | |", "|---|---|", f"| base model | {base} |", f"| datasets | {', '.join(data.get('dataset') or []) or '-'} |",
              f"| method | {ft} |", f"| chat template | {source.template} (written into tokenizer_config / chat_template.jinja) |"]
    if result.get("stop"):
        lines.append(f"| stops at | {', '.join('`' + s + '`' for s in result['stop'])} |")
    lines.append(f"| weights | {spec.export.dtype}, safetensors shards of at most {spec.export.max_shard_size} |")
    lines.append("")
    hp = {}
    for key in ("learning_rate", "num_train_epochs", "max_steps", "per_device_train_batch_size", "gradient_accumulation_steps",
                "lr_scheduler_type", "warmup_ratio", "weight_decay", "optim", "seed"):
        if key in train:
            hp[key] = train[key]
    if ft in ("lora", "adalora") and method.get("lora"):
        lo = method["lora"]
        hp.update({f"lora.{k}": lo.get(k) for k in ("rank", "alpha", "dropout", "target", "dora", "rslora") if k in lo})
    if data.get("cutoff_len"):
        hp["cutoff_len"] = data["cutoff_len"]
    if hp:
        lines += ["## Hyperparameters", "", "| | |", "|---|---|", *[f"| {k} | {_fmt(v)} |" for k, v in hp.items()], ""]
    metrics = final_metrics(run_dir)
    if metrics:
        lines += ["## Final metrics", "", "| | |", "|---|---|", *[f"| {k} | {_fmt(v)} |" for k, v in metrics.items()], ""]
    if not result.get("merged", True):
        lines += ["## Adapter, not merged", "", result["why_not_merged"] + ".", "",
                  "```python", "from peft import AutoPeftModelForCausalLM",
                  f"model = AutoPeftModelForCausalLM.from_pretrained('{spec.export.export_dir or 'EXPORT_DIR'}/adapter')", "```", ""]
        return "\n".join(lines)
    v = result.get("verify")
    if v:
        lines += ["## Verification", "", f"Reloaded with plain transformers (no peft) and compared with {v['reference']} on "
                  f"{len(v['prompts'])} prompts: {v['summary']} ({'passed' if v['ok'] else 'FAILED'}); "
                  f"top-1 agreement {v['top1_agreement']:.3f}.", ""]
        for name, g in (v.get("gguf") or {}).items():
            first = (f"; greedy continuation: its first {g['first_tokens_same']} of {g['first_tokens']} tokens as transformers"
                     if "first_tokens" in g else "")
            lines.append(f"- `{name}` in llama.cpp: same tokens as the tokenizer: {g['same_tokens_as_tokenizer']}; next-token "
                         f"agreement with transformers {g['top1_agreement']:.3f}; largest logit difference {g['max_logit_diff']:.3g}{first}.")
        lines += ["", f"Sample (greedy): **{v['sample']['prompt']}** → {v['sample']['answer']}", ""]
    lines += ["## Use", "", "```python", "from transformers import AutoModelForCausalLM, AutoTokenizer",
              f"PATH = {json.dumps(result.get('export_dir') or 'EXPORT_DIR')}  # this folder",
              "tok = AutoTokenizer.from_pretrained(PATH)", "model = AutoModelForCausalLM.from_pretrained(PATH)",
              "inputs = tok.apply_chat_template([{'role': 'user', 'content': 'Who are you?'}], add_generation_prompt=True,",
              "                                 return_tensors='pt', return_dict=True)",
              "out = model.generate(**inputs, max_new_tokens=64)",
              "print(tok.decode(out[0][inputs['input_ids'].shape[1]:], skip_special_tokens=True))", "```", ""]
    if result.get("gguf"):
        lines += [f"GGUF: {', '.join(result['gguf'])} (llama.cpp: `llama-cli -m {result['gguf'][0]} -cnv`)."]
        from studio.export.quant import summary

        lines += [f"- {summary(n, r)}" for n, r in (result.get("gguf_quant") or {}).items()]
    if result.get("modelfile"):
        lines += ["", f"Ollama: `{result['ollama_command']}`"]
    if result.get("gguf_skipped"):
        lines += ["", result["gguf_skipped"]]
    return "\n".join(lines) + "\n"
