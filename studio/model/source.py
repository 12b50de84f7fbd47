"""What an export starts from and where it goes: the source (adapter, prompt-style adapter or whole model), the
training run's spec and template, and the checked target folder.

    source = find_source(spec)        # refuses an adapter trained on another base, naming both
    target = target_dir(spec, source) # refuses a folder that is not an earlier export unless export.overwrite
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from studio.spec import SpecError, to_dict

MANIFEST = "export.json"  # written last into every export: marks a folder as one


@dataclass
class Source:
    kind: str  # "merge" (mergeable adapter), "prompt" (prompt-style adapter: exported as is), "full" (a whole model)
    base: str  # the base model (merge, prompt) or the model folder (full)
    adapter: Path | None
    run_spec: dict  # the training run's spec.yaml, or {} when there is none
    run_spec_path: Path | None
    template: str
    peft_type: str = ""


def _read_run(folder: Path) -> tuple[dict, Path | None]:
    """The training run's spec (as a dict, for the model card) and its file, read through spec.load."""
    from studio.run.status import read_spec, spec_file

    f = spec_file(folder)
    if f is None or f.name != "spec.yaml":
        return {}, None
    run = read_spec(folder)
    return (to_dict(run) if run else {}), f


def find_source(spec) -> Source:
    """Work out what to export from the spec; refuse mismatches with a message that names both sides."""
    from studio.model import models

    m = spec.model
    if m.adapter:
        p = Path(m.adapter).expanduser()
        if not p.exists():
            raise SpecError(f"model.adapter: {p} not found; give a run folder, its adapter/ folder, or a model/ folder")
        if (p / "adapter_config.json").exists() or (p / "adapter" / "adapter_config.json").exists():
            adapter = models.find_adapter(p)
            run, spec_file = _read_run(adapter)
            peft_type = json.loads((adapter / "adapter_config.json").read_text()).get("peft_type", "")
            trained_on = models.adapter_base(adapter)
            if trained_on and not models.same_base(trained_on, m.name_or_path):
                raise SpecError(f"model.adapter: {adapter} was trained on base model `{trained_on}`, but model.name_or_path is "
                                f"`{m.name_or_path}`. Set model.name_or_path={trained_on}, or pick an adapter trained on `{m.name_or_path}`.")
            kind = "merge" if peft_type in ("LORA", "ADALORA", "IA3") else "prompt"
            return Source(kind, m.name_or_path, adapter, run, spec_file, _template(spec, run), peft_type)
        model_dir = p / "model" if (p / "model" / "config.json").exists() else p
        if not (model_dir / "config.json").exists():
            raise SpecError(f"model.adapter: {p} holds no adapter (adapter_config.json) and no model (config.json)")
        return _full(spec, model_dir)
    p = Path(m.name_or_path).expanduser()
    if (p / "model" / "config.json").exists():
        p = p / "model"
    return _full(spec, p if p.exists() else Path(models.resolve(m.name_or_path)))


def _full(spec, model_dir: Path) -> Source:
    run, spec_file = _read_run(model_dir)
    return Source("full", str(model_dir), None, run, spec_file, _template(spec, run))


def _template(spec, run: dict) -> str:
    """The template training used; an export spec that names a different one is refused."""
    trained = (run.get("model") or {}).get("template")
    asked = spec.model.template
    if trained and asked != "auto" and asked != trained:
        raise SpecError(f"model.template: the run was trained with template `{trained}`, but the export asks for `{asked}`. "
                        f"Leave model.template=auto (the export uses the training template) or set it to {trained}.")
    return trained or asked


def defaults_from_run(spec, explicit: set[str]) -> None:
    """Fill model.name_or_path from the adapter's run when the user did not name a base model."""
    from studio.model import models

    if spec.model.adapter and "model.name_or_path" not in explicit:
        try:
            base = models.adapter_base(models.find_adapter(spec.model.adapter))
        except models.ModelError:
            return
        if base:
            spec.model.name_or_path = base


def target_dir(spec, source: Source | None = None) -> Path:
    """export.export_dir, checked: an existing folder must be an earlier export unless export.overwrite."""
    d = Path(spec.export.export_dir or Path(spec.output_dir) / "export").expanduser()
    out, cwd = Path(spec.output_dir).resolve(), Path.cwd().resolve()
    if d.resolve() in (out, *out.parents) or d.resolve() in (cwd, *cwd.parents):
        raise SpecError(f"export.export_dir: {d} holds the job's own folder or the working folder, which an export would "
                        "replace; choose a new folder, e.g. OUTPUT_DIR/export")
    if source is not None:
        for src in filter(None, (source.adapter, Path(source.base) if source.kind == "full" else None)):
            if d.resolve() in (src.resolve(), *src.resolve().parents):
                raise SpecError(f"export.export_dir: {d} would replace the model being exported ({src}); choose another folder")
    if d.exists() and not d.is_dir():
        raise SpecError(f"export.export_dir: {d} is a file; choose a folder")
    if d.is_dir() and any(d.iterdir()) and not (d / MANIFEST).exists() and not spec.export.overwrite:
        raise SpecError(f"export.export_dir: {d} exists and is not an earlier export (no {MANIFEST}); "
                        "choose another folder, or set export.overwrite=true to replace it")
    return d
