"""Which model a folder stands for, for every job that loads one, and what an export starts from and where it goes.

    r = resolve_folder("runs/identity_lora")           # a run folder, its adapter/ or checkpoint-N/, a full
    r.name, r.model, r.adapter, r.template, r.run       # fine-tune's run or model/ folder, an export
    r = resolve_folder("runs/x", base="default")        # refuses an adapter trained on another base, naming both
    r = resolve_folder(None, base="default")            # the base model itself (a run folder given as it: that run)
    r = resolve_spec(spec.model)                        # model.adapter on model.name_or_path with model.template
    source = find_source(spec)        # the export's source: model.adapter (or model.name_or_path) as resolve_folder reads it
    target = target_dir(spec, source) # refuses a folder that is not an earlier export unless export.overwrite

Chat, serve, evaluate, generate and export all resolve through resolve_folder; check_base is the one refusal of a
model trained on another base.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from studio.model.models import ModelError
from studio.spec import SpecError, to_dict

MANIFEST = "export.json"  # written last into every export: marks a folder as one
MERGEABLE = ("LORA", "ADALORA", "IA3")  # adapters whose update an export merges into the weights


@dataclass
class Resolved:
    """What a folder (or a model name) stands for: the model to load, the adapter on it, the template, the run."""
    name: str  # `base`, or the run's name (RUN-checkpoint-N for a checkpoint), else the folder's
    model: str  # the base model an adapter goes on, or a whole model (a folder, a hub id or `default`)
    adapter: Path | None = None  # the adapter folder; None: `model` holds every weight
    template: str = "auto"  # the one asked for, else the one training used, else auto
    run: Path | None = None  # the training run folder (its spec.yaml), which keeps the evaluation history
    run_spec: Any = None  # the typed spec saved in or beside the folder (an export keeps training_spec.yaml), or None
    trained_on: str | None = None  # the base model it was trained on (its run's spec, else adapter_config.json)
    peft_type: str = ""  # the adapter's method as adapter_config.json names it (LORA, PREFIX_TUNING ...)

    @property
    def run_template(self) -> str | None:
        """The template training used, or None without a run spec."""
        return self.run_spec.model.template if self.run_spec else None

    @property
    def quantization_bit(self) -> int | None:
        """An adapter trained on a quantized base (QLoRA): the bits that base was loaded in."""
        return self.run_spec.model.quantization_bit if self.adapter is not None and self.run_spec else None

    @property
    def label(self) -> str:
        """The model (its folder name when it lives in the model cache) and the adapter, as a status line shows them."""
        from studio.model import models

        shown = Path(self.model).name if models.cache_root() in Path(self.model).parents else self.model
        return shown + (f" + {self.adapter}" if self.adapter else "")


def check_base(what: str, trained_on: str | None, base: str | None) -> None:
    """Refuse `what` (an adapter, or a model trained from a base) when it was trained on another base than `base`."""
    from studio.model import models

    if base and trained_on and not models.same_base(trained_on, base):
        raise ModelError(f"{what} was trained on `{trained_on}`, not on `{base}`; choose base model `{trained_on}` "
                         f"(model.name_or_path={trained_on}), or one trained on base model `{base}`")


def _spec_of(folder: Path):
    """The typed spec saved in or beside `folder` (run.status.read_spec), or None; ModelError when it cannot be read."""
    from studio.run.status import read_spec

    try:
        return read_spec(folder)
    except SpecError as e:
        raise ModelError(f"cannot read the run's spec: {e}") from None


def _whole_model(p: Path) -> Path | None:
    """The complete model a folder stands for: itself, a full fine-tune's model/, or an export run's export/."""
    return next((c for c in (p, p / "model", p / "export") if (c / "config.json").exists()), None)


def resolve_folder(target: str | Path | None = None, base: str | None = None, template: str | None = None) -> Resolved:
    """A folder (a run folder, its adapter/ or checkpoint-N/, a full fine-tune's run or model/ folder, an export) or,
    with no target, the model `base` names -> Resolved. An adapter goes on `base` (default: the base it was trained
    on) and one trained on another base is refused; a whole model brings every weight, so `base` does not apply to it.
    `template` None: the one training used, else auto. Raises ModelError saying what to give instead."""
    from studio.model import models

    if not target:
        model = base or models.DEFAULT
        p = Path(model).expanduser()
        if not p.is_dir():
            return Resolved("base", model, template=template or "auto")
        if (p / "config.json").exists():  # a model folder; an export keeps a copy of the run's spec
            rs = _spec_of(p)
            return Resolved("base", model, template=template or (rs.model.template if rs else None) or "auto", run_spec=rs)
        target, base = p, None  # a run folder given as the model
    p = Path(target).expanduser()
    if not p.exists():
        raise ModelError(f"adapter folder not found: {p}; give a run folder (runs/NAME), its adapter/ or checkpoint-N/ "
                         "folder, or a model folder")
    adapter = None
    if (p / "adapter_config.json").exists() or (p / "adapter" / "adapter_config.json").exists():
        folder = adapter = models.find_adapter(p)
    elif (folder := _whole_model(p)) is None:
        raise ModelError(f"{p} holds no adapter (adapter_config.json) and no model (config.json); give a run folder, its "
                         "adapter/ or checkpoint-N/ folder, or a model folder")
    rs = _spec_of(folder)
    trained_on, peft_type = (rs.model.name_or_path if rs else None), ""
    if adapter is not None:
        config = json.loads((adapter / "adapter_config.json").read_text())
        trained_on, peft_type = trained_on or config.get("base_model_name_or_path"), config.get("peft_type", "")
        check_base(f"the adapter {adapter}", trained_on, base)
    run = folder.parent if (folder.parent / "spec.yaml").is_file() else (folder if (folder / "spec.yaml").is_file() else None)
    name = run.name if run else folder.name
    if run and folder.name.startswith("checkpoint-"):
        name = f"{run.name}-{folder.name}"
    model = (base or trained_on or models.DEFAULT) if adapter is not None else str(folder)
    return Resolved(name, model, adapter, template or (rs.model.template if rs else None) or "auto", run, rs, trained_on, peft_type)


def resolve_spec(model_spec, target: str | None = None) -> Resolved:
    """The model a spec's `model` section names: `target` (default: model.adapter; empty or `base`: the base model
    itself) resolved on model.name_or_path, with model.template (auto: the one training used)."""
    target = model_spec.adapter if target is None else target
    if not target or target == "base":
        return Resolved("base", model_spec.name_or_path, template=model_spec.template)
    template = None if model_spec.template == "auto" else model_spec.template
    return resolve_folder(target, model_spec.name_or_path, template)


# --- what an export starts from -------------------------------------------------------------------------


@dataclass
class ExportSource:
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


def find_source(spec) -> ExportSource:
    """Work out what to export from the spec; refuse mismatches with a message that names both sides."""
    from studio.model import models

    m = spec.model
    if m.adapter:
        try:
            r = resolve_spec(m)
        except ModelError as e:
            raise SpecError(f"model.adapter: {e}") from None
        if r.adapter is None:
            return _full(spec, Path(r.model))
        run, spec_file = _read_run(r.adapter)
        kind = "merge" if r.peft_type in MERGEABLE else "prompt"
        return ExportSource(kind, m.name_or_path, r.adapter, run, spec_file, _template(spec, run), r.peft_type)
    p = Path(m.name_or_path).expanduser()
    if (p / "model" / "config.json").exists():
        p = p / "model"
    return _full(spec, p if p.exists() else Path(models.resolve(m.name_or_path)))


def _full(spec, model_dir: Path) -> ExportSource:
    run, spec_file = _read_run(model_dir)
    return ExportSource("full", str(model_dir), None, run, spec_file, _template(spec, run))


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
    if spec.model.adapter and "model.name_or_path" not in explicit:
        try:
            r = resolve_folder(spec.model.adapter)
        except ModelError:
            return
        if r.adapter is not None and r.trained_on:
            spec.model.name_or_path = r.trained_on


def target_dir(spec, source: ExportSource | None = None) -> Path:
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
