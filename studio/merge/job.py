"""Merge entry point: two or more LoRA adapters of one base model into one, with PEFT's add_weighted_adapter.

    python -m studio.merge.job runs/merged       (what `studio merge SPEC` starts in the background)

The adapters (`merge.adapters`: run folders, adapter folders or checkpoints, each trained on `model.name_or_path`)
are loaded on the base in fp32 and combined by `merge.method` with `merge.weights`; the result is written to
RUN_DIR/adapter (adapter_config.json, adapter_model.safetensors, the first adapter's tokenizer files) like a training
run's, so chat, evaluate, serve and export take the run folder like any other. merge.json says what went in. Each of
`merge.prompts` is answered greedily by the merged adapter at the end (the `done` event's `answers`).
"""
from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

from studio.run import events as ev
from studio.run import job

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "special_tokens_map.json")


def _phase(writer, done: int, total: int, name: str) -> None:
    writer.write("progress", done=done, total=total, unit="phases", phase=name)
    writer.write("message", text=f"[{done + 1}/{total}] {name}")


def merge(spec, run_dir: Path, writer) -> dict:
    import torch
    from peft import PeftModel

    from studio.merge import plan
    from studio.model import models
    from studio.spec.fields import DENSITY_METHODS

    m = spec.merge
    parts = plan(spec)
    weights = [float(w) for w in m.weights] or [1.0] * len(parts)
    total = 4 + bool(m.prompts)
    _phase(writer, 0, total, "load the base model")
    base = models.load_model(dataclasses.replace(spec.model, adapter=None, quantization_bit=None), "fp32")
    _phase(writer, 1, total, f"load {len(parts)} adapters")
    names = [f"a{i}" for i in range(len(parts))]
    model = PeftModel.from_pretrained(base, str(parts[0].adapter), adapter_name=names[0])
    for name, part in zip(names[1:], parts[1:]):
        model.load_adapter(str(part.adapter), adapter_name=name)
    _phase(writer, 2, total, f"merge ({m.method})")
    kwargs = {"density": m.density} if m.method in DENSITY_METHODS else {}
    if m.method.startswith("ties") or m.method.startswith("dare_ties"):
        kwargs["majority_sign_method"] = m.majority_sign_method
    if m.method.endswith("svd"):
        kwargs["svd_rank"] = m.svd_rank
    try:
        with torch.no_grad():
            model.add_weighted_adapter(names, weights, "merged", combination_type=m.method, **kwargs)
    except ValueError as e:  # PEFT's own refusal (modules_to_save on the same module, ...): the user's to fix
        raise models.ModelError(f"merge.method {m.method}: PEFT cannot merge these adapters: {e}") from None
    for name in names:
        model.delete_adapter(name)
    model.set_adapter("merged")
    _phase(writer, 3, total, "save")
    tmp = run_dir / ".adapter.partial"
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(str(tmp), selected_adapters=["merged"])
    saved = tmp / "merged" if (tmp / "merged" / "adapter_config.json").exists() else tmp
    for f in TOKENIZER_FILES:  # the tokenizer and chat template the first adapter was trained with
        if (Path(parts[0].adapter) / f).exists():
            shutil.copy2(Path(parts[0].adapter) / f, saved / f)
    out = run_dir / "adapter"
    shutil.rmtree(out, ignore_errors=True)
    saved.rename(out)
    shutil.rmtree(tmp, ignore_errors=True)
    rank = json.loads((out / "adapter_config.json").read_text()).get("r")
    result = {"path": str(out), "method": m.method, "weights": weights, "rank": rank,
              "adapters": [{"path": str(p.adapter), "name": p.name} for p in parts],
              **({"density": m.density} if "density" in kwargs else {})}
    (run_dir / "merge.json").write_text(json.dumps(result, indent=2))
    if m.prompts:
        _phase(writer, 4, total, f"answer {len(m.prompts)} prompt(s)")
        result["answers"] = answers(model, spec, parts[0], m.prompts)
    return result


def answers(model, spec, first, prompts: list[str]) -> list[dict]:
    """Greedy answers of the merged adapter, in the template the first adapter was trained with."""
    import torch

    from studio.data.templates import Template
    from studio.evaluate.loading import prompt_ids
    from studio.model import models

    tok = models.load_tokenizer(spec.model.name_or_path, spec.model.trust_remote_code)
    template = Template(spec.model.template if spec.model.template != "auto" else first.template, tok)
    out = []
    model.eval()
    for q in prompts:
        ids = torch.tensor([prompt_ids([{"role": "user", "content": q}], template, 1024)])
        with torch.no_grad():
            gen = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=48, do_sample=False,
                                 eos_token_id=template.stop_token_ids(), pad_token_id=tok.pad_token_id)
        out.append({"prompt": q, "answer": tok.decode(gen[0, ids.shape[1]:], skip_special_tokens=True).strip()})
    return out


def body(spec, run_dir: Path, writer: ev.EventWriter):
    try:
        return "done", merge(spec, run_dir, writer)
    except job.Aborted:
        shutil.rmtree(run_dir / ".adapter.partial", ignore_errors=True)
        raise job.Aborted(message="merge stopped; nothing was written") from None


def main(argv: list[str] | None = None) -> int:
    return job.main(body, __doc__, argv)


if __name__ == "__main__":
    raise SystemExit(main())
