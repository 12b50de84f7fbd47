"""Train tab parts for the preference and RL stages: the stage's own fields, the datasets that fit the stage, and the
curves each stage cares about (margins and accuracy for preferences, reward per function and KL for GRPO).

The train tab calls `build` after its method groups (accordions shown for the chosen method.stage), `wire` once the
stage widget and dataset lists exist (a stage the user chooses sets its `defaults` from the stage table and drops the
chosen datasets that do not fit it, with a note), and plots `curves(events)` beside the loss.
"""
from __future__ import annotations

import pandas as pd

from studio.spec.stages import STAGE_TABLE

def groups() -> list:
    """(title, stage, field names) of each stage with options, from the stage table: its section's fields in order."""
    from dataclasses import fields as dc_fields

    return [(s.title, s.name, [f"method.{s.name}.{f.name}" for f in dc_fields(s.section)])
            for s in STAGE_TABLE.values() if s.section]


_PLOTTED = {p for s in STAGE_TABLE.values() for p in s.plotted}
_PREFIXES = tuple(p[:-1] for p in _PLOTTED if p.endswith("*"))


def plotted(name: str) -> bool:
    """Whether the page draws the logged metric `name` beside the loss (any stage's `plotted`; a prefix: its means)."""
    return name in _PLOTTED or (name.startswith(_PREFIXES) and name.endswith("/mean"))


def curves(events: list[dict]) -> pd.DataFrame:
    """Stage metrics from the log events: columns step, value, series (per-function GRPO rewards included)."""
    rows = []
    for e in events:
        if e["event"] != "log":
            continue
        for k, v in e.items():
            if isinstance(v, (int, float)) and plotted(k):
                rows.append((e["step"], float(v), k))
    return pd.DataFrame(rows, columns=["step", "value", "series"]).astype({"step": "int64", "value": "float64", "series": "str"})


def samples_html(events: list[dict]) -> str:
    """The latest GRPO completions with their reward per function (the newest `samples` event); "" for other stages."""
    import html

    last = next((e for e in reversed(events) if e["event"] == "samples"), None)
    if not last or not last.get("items"):
        return ""
    names = list(last["items"][0].get("rewards") or {})
    head = "".join(f"<th>{html.escape(n)}</th>" for n in ["prompt", "completion", *names, "advantage"])
    rows = "".join(
        "<tr>" + f"<td>{html.escape(it.get('prompt', ''))}</td><td><code>{html.escape(it.get('completion', ''))}</code></td>"
        + "".join(f"<td>{(it.get('rewards') or {}).get(n)}</td>" for n in names) + f"<td>{it.get('advantage')}</td></tr>"
        for it in last["items"])
    return (f"<div class='st-samples' data-step='{last.get('step')}'><b>Completions at step {last.get('step')}</b>"
            f"<table><tr>{head}</tr>{rows}</table></div>")


def build(fields: dict, rows, stage: str) -> list:
    """Accordions with each stage's fields (added to `fields`); `rows(names, special)` lays out widgets."""
    import gradio as gr

    boxes = []
    for title, own, names in groups():
        with gr.Accordion(f"{title} options", open=True, visible=stage == own) as box:
            fields.update(rows([n for n in names if n not in fields], {}))
        boxes.append((box, own))
    return boxes


def form_values(stage: str, page: dict) -> dict:
    """The values the form takes when `stage` is chosen: its defaults in the stage table, and for each other field some
    stage sets, the page's own (`page`: dotted -> the value of the page's first spec)."""
    own = STAGE_TABLE[stage].defaults if stage in STAGE_TABLE else {}
    keys = dict.fromkeys(k for s in STAGE_TABLE.values() for k in s.defaults)
    return {k: own.get(k, page.get(k)) for k in keys}


def not_fitting(stage: str, lists: dict, fitting: list[str], kinds: dict) -> tuple[dict, str]:
    """The dataset lists (field -> names) kept to the entries that fit `stage`, and a line naming those dropped and why
    ("" when none was); `kinds`: name -> its kind in dataset_info.json, where known."""
    kept, gone = {}, {}
    for name, values in lists.items():
        kept[name] = [v for v in values or [] if v in fitting]
        for v in values or []:
            if v not in fitting:
                gone.setdefault(v, name)
    if not gone:
        return kept, ""
    data = STAGE_TABLE[stage].data if stage in STAGE_TABLE else ()
    wants = " or ".join(f"{k} ({KINDS[k]})" if k in KINDS else k for k in data)
    said = ", ".join(f"`{v}` ({kinds.get(v) or 'not registered'})" for v in gone)
    where = " and ".join(dict.fromkeys(gone.values()))
    return kept, f"Removed from {where}: {said}; stage {stage} trains on {wants} datasets."


KINDS = {"ranking": "preference pairs", "kto": "answers labelled good or bad", "prompt": "prompts only"}  # the note's words


def stage_note(stage: str, values: dict, dropped: str) -> str:
    """What choosing `stage` changed in the form: the fields it set, and the datasets it dropped."""
    own = STAGE_TABLE[stage].defaults if stage in STAGE_TABLE else {}
    lines = []
    if own:
        lines.append(f"Stage {stage} sets its defaults: " + ", ".join(f"{k}={values[k]}" for k in own) + ".")
    elif values:
        lines.append(f"Stage {stage} takes the page's own values: " + ", ".join(f"{k}={v}" for k, v in values.items()) + ".")
    if dropped:
        lines.append(dropped)
    return "  \n".join(lines)


def _kinds(folder, names) -> dict:
    from studio.data import registry
    from studio.errors import UserError

    try:
        info = registry.read_info(folder)
    except UserError:
        return {}
    out = {}
    for n in names:
        try:
            out[n] = registry.entry(folder, n, info).kind
        except UserError:
            continue
    return out


def wire(stage_widget, boxes: list, dataset_dir_widget, dataset_widgets: dict, workdir, fields: dict, note, page: dict) -> None:
    """A stage change (a loaded spec's too) shows its fields and offers only the datasets that fit it; a stage the user
    chooses also sets the stage's defaults (`page`: the page's own values, for the fields another stage sets) and drops
    the chosen datasets that do not fit it, saying which and why in `note`. `dataset_widgets`: dotted name -> list."""
    import gradio as gr

    from studio.data import preference
    from studio.ui import form

    lists = list(dataset_widgets.values())

    def on_stage(stage, folder):
        names = preference.fitting(workdir / (folder or "data"), stage)
        shown = [gr.update(visible=stage == own) for _, own in boxes]
        return shown + [gr.update(choices=names) for _ in lists]

    stage_widget.change(on_stage, [stage_widget, dataset_dir_widget], [b for b, _ in boxes] + lists)
    keys = [k for k in form_values("sft", page) if k in fields]

    def on_pick(stage, folder, *chosen):
        ddir = workdir / (folder or "data")
        names = preference.fitting(ddir, stage)
        picked = dict(zip(dataset_widgets, chosen))
        kept, dropped = not_fitting(stage, picked, names, _kinds(ddir, [v for c in chosen for v in c or []]))
        values = form_values(stage, page)
        return ([gr.update(choices=names, value=kept[n]) for n in dataset_widgets]
                + [form.to_widget(k, values[k]) for k in keys] + [stage_note(stage, values, dropped)])

    stage_widget.input(on_pick, [stage_widget, dataset_dir_widget, *lists], [*lists, *(fields[k] for k in keys), note])
