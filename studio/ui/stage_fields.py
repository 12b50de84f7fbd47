"""Train tab parts for the preference and RL stages: the stage's own fields, the datasets that fit the stage, and the
curves each stage cares about (margins and accuracy for preferences, reward per function and KL for GRPO).

The train tab calls `build` after its method groups (accordions shown for the chosen method.stage), `wire` once the
stage widget and dataset lists exist, and plots `curves(events)` beside the loss.
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


def wire(stage_widget, boxes: list, dataset_dir_widget, dataset_widgets: list, workdir) -> None:
    """A stage change shows its fields and offers only the datasets that fit it."""
    import gradio as gr

    from studio.data import preference

    def on_stage(stage, folder):
        names = preference.fitting(workdir / (folder or "data"), stage)
        shown = [gr.update(visible=stage == own) for _, own in boxes]
        return shown + [gr.update(choices=names) for _ in dataset_widgets]

    stage_widget.change(on_stage, [stage_widget, dataset_dir_widget], [b for b, _ in boxes] + list(dataset_widgets))
