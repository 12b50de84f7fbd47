"""The merge job: two or more LoRA adapters of one base model become one adapter (PEFT's add_weighted_adapter).

    parts = plan(spec)    # the adapters as Resolved, each checked: LoRA, trained on model.name_or_path, ranks the method takes

plan() reads only JSON files: the check before a job (launch/preflight.py) and the job itself (merge/job.py) use it.
"""
from __future__ import annotations

import json
from pathlib import Path

from studio.model.models import ModelError

SAME_RANK = ("linear", "ties", "dare_ties", "dare_linear", "magnitude_prune")  # PEFT merges A and B entrywise


def plan(spec) -> list:
    """The adapters of `spec.merge` on `spec.model.name_or_path`, each resolved and checked; ModelError naming the
    adapter and the reason for the first that cannot be merged with the others."""
    from studio.model.source import resolve_folder

    m, base = spec.merge, spec.model.name_or_path
    if len(m.adapters) < 2:
        raise ModelError("merge.adapters: name two or more adapters (run folders or adapter folders) to merge")
    parts, configs = [], []
    for i, target in enumerate(m.adapters):
        where = f"merge.adapters[{i}] ({target})"
        try:
            r = resolve_folder(target, base)
        except ModelError as e:
            raise ModelError(f"{where}: {e}") from None
        if r.adapter is None:
            raise ModelError(f"{where}: holds a whole model, not an adapter; merge LoRA adapters (a LoRA run's folder)")
        config = json.loads((Path(r.adapter) / "adapter_config.json").read_text())
        if config.get("peft_type") != "LORA":
            raise ModelError(f"{where}: a {config.get('peft_type', '?')} adapter; only LoRA adapters (lora, pissa, dora ... "
                             "as PEFT saves them with peft_type LORA) can be merged")
        if config.get("use_dora"):
            raise ModelError(f"{where}: a DoRA adapter; PEFT's weighted merge takes plain LoRA adapters only")
        parts.append(r)
        configs.append(config)
    ranks = [c.get("r") for c in configs]
    if m.method in SAME_RANK and len(set(ranks)) > 1:
        raise ModelError(f"merge.method {m.method}: needs adapters of one rank, these have ranks {ranks}; use cat or an _svd "
                         "method (ties_svd, dare_ties_svd ...), or adapters trained with the same method.lora.rank")
    kinds = {type(c.get("target_modules")).__name__ for c in configs}
    if len(kinds) > 1:
        raise ModelError("merge.adapters: their target modules are given in different forms (a pattern and a list); "
                         "train them with the same method.lora.target")
    return parts


def with_defaults(spec):
    """`spec` with model.template taken from the first adapter's run when left at auto (so the merged run's spec names
    the template its adapters were trained with, as a training run's does)."""
    if spec.model.template == "auto":
        first = plan(spec)[0]
        if first.run_template and first.run_template != "auto":
            spec.model.template = first.run_template
    return spec
