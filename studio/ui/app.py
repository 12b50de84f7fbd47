"""The web UI: a shared top bar (model, method, quantization, template, adapter) above one tab per task.

    studio webui          (see studio/ui/webui.py; this module only builds the page)

Adding a tab: write `studio/ui/<name>_tab.py` with

    TITLE = "Chat"
    def build(ctx: Ctx) -> None:        # called inside `with gr.Tab(TITLE)`; make your components here
        ...                             # read the shared choices from ctx.top["model.name_or_path"] etc.

TABS below names the tabs in page order; a module that does not exist (yet) is left out, so a new tab
appears once its file is there. A new kind of tab gets its module name added to TABS, in place.
Everything a tab needs from the page is on `ctx` (below); the tab builds specs with studio/ui/form.py
(widgets and help text come from the spec fields) and starts jobs with studio/ui/jobs.py. A picker of runs or
models is kept current by `ctx.pickers.add(dropdown, choices)` (studio/ui/pickers.py).
"""
from __future__ import annotations

import functools
import importlib
import importlib.util
from dataclasses import dataclass, field
from pathlib import Path

import gradio as gr

from studio.model import models
from studio.run import status as runs
from studio.data.templates import NAMES as TEMPLATES
from studio.ui import chart, form, jobs, pickers as picking

TABS = ["studio.ui.train_tab", "studio.ui.evaluate_tab", "studio.ui.chat_tab", "studio.ui.export_tab", "studio.ui.data_tab"]

TOP = ["model.name_or_path", "method.finetuning_type", "model.quantization_bit", "model.template", "model.adapter"]


@dataclass
class Ctx:
    """What every tab gets: the working folder, the runs folder, the page, and the shared top-bar components."""
    workdir: Path
    runs_root: Path
    demo: gr.Blocks
    top: dict = field(default_factory=dict)  # dotted spec field -> component, for TOP
    refresh_top: gr.Button | None = None  # "↻ runs and models": every picker of ctx.pickers reads its choices again
    pickers: picking.Pickers | None = None  # the page's pickers of runs and models, kept current (ui/pickers.py)


def model_roots(workdir: Path) -> tuple:
    """The folders whose model folders model_choices lists."""
    return Path(workdir) / "models", models.cache_root() / "models"


def model_choices(workdir: Path) -> list[str]:
    """`default` and the local model folders (with config.json) under ./models and the studio's model cache."""
    found = ["default"]
    default_dir = (models.cache_root() / "models" / models.DEFAULT_NAME).resolve()
    for root in model_roots(workdir):
        if root.is_dir():
            for p in sorted(root.iterdir()):
                if (p / "config.json").exists() and p.resolve() != default_dir and ".tmp" not in p.name:
                    found.append(str(p))
    return found


def adapter_choices(runs_root: Path, workdir: Path) -> list:
    """("none", "") and the run folders that hold an adapter or checkpoints, newest first."""
    out = [("none", "")]
    for r in runs.list_runs(runs_root):
        if (r.path / "adapter" / "adapter_config.json").exists() or runs.last_checkpoint(r.path):
            out.append((f"{r.name} ({r.status})", jobs.shown(r.path, workdir)))
    return out


def top_bar(ctx: Ctx) -> None:
    with gr.Row(elem_id="top-bar", equal_height=True):
        special = {
            "model.name_or_path": gr.Dropdown(choices=model_choices(ctx.workdir), value="default", allow_custom_value=True,
                                              label="model", info=form.specmod.field_help("model.name_or_path"),
                                              elem_id=form.elem_id("model.name_or_path"), scale=3, render=False),
            "model.template": gr.Dropdown(choices=TEMPLATES, value="auto", label="template",
                                          info=form.specmod.field_help("model.template"), elem_id=form.elem_id("model.template"), render=False),
            "model.adapter": gr.Dropdown(choices=adapter_choices(ctx.runs_root, ctx.workdir), value="", allow_custom_value=True,
                                         label="adapter / checkpoint", info=form.specmod.field_help("model.adapter"),
                                         elem_id=form.elem_id("model.adapter"), scale=2, render=False),
        }
        ctx.top = form.bind(TOP, special)
        ctx.refresh_top = gr.Button("↻ runs and models", elem_id="refresh-top", scale=0, min_width=150, size="sm")
    ctx.pickers = ctx.pickers or picking.Pickers(ctx.runs_root, (*model_roots(ctx.workdir), ctx.workdir / "data" / "dataset_info.json"))
    ctx.pickers.add(ctx.top["model.name_or_path"], functools.partial(model_choices, ctx.workdir))
    ctx.pickers.add(ctx.top["model.adapter"], functools.partial(adapter_choices, ctx.runs_root, ctx.workdir))


def tab_modules() -> list:
    return [importlib.import_module(name) for name in TABS if importlib.util.find_spec(name) is not None]


def build_app(workdir: Path | str) -> gr.Blocks:
    workdir = Path(workdir)
    with gr.Blocks(title="studio", fill_width=True) as demo:
        ctx = Ctx(workdir=workdir, runs_root=workdir / "runs", demo=demo)
        gr.Markdown("## studio · fine-tune language models", elem_id="title")
        top_bar(ctx)
        for module in tab_modules():
            with gr.Tab(module.TITLE, elem_id="tab-" + module.__name__.rsplit(".", 1)[-1]):
                module.build(ctx)
        ctx.pickers.wire(demo, ctx.refresh_top)
    return demo


CSS = """
#title h2 {margin: 0}
.st-progress {padding: 6px 2px}
.st-bar {height: 14px; background: var(--neutral-200); border-radius: 7px; overflow: hidden}
.st-fill {height: 100%; background: var(--color-accent)}  /* no width transition: each update would draw ~30 frames */
.st-fill.st-done {background: #16a34a} .st-fill.st-error, .st-fill.st-crashed {background: #dc2626}
.st-fill.st-aborted {background: #9ca3af}
.st-line {margin-top: 6px; font-size: 0.95em}
.st-status {font-weight: 600; text-transform: uppercase; font-size: 0.85em}
.st-tok {white-space: pre-wrap; font-family: var(--font-mono); font-size: 0.85em; line-height: 1.5;
         border: 1px solid var(--neutral-200); border-radius: 6px; padding: 8px; margin: 6px 0}
.st-tok .t {background: rgba(22, 163, 74, 0.22); border-bottom: 2px solid #16a34a}
.st-tok .cut {color: #dc2626; font-weight: 600}
.st-meta {font-size: 0.8em; color: var(--neutral-500)}
.st-bench {border-collapse: collapse; margin: 6px 0} .st-bench th, .st-bench td {border: 1px solid var(--neutral-200); padding: 4px 8px; text-align: right}
.st-bench th[scope=row] {text-align: left} .st-bench td.st-lost {background: rgba(220, 38, 38, 0.18); color: #b91c1c; font-weight: 600}
.st-bench td.st-gain {background: rgba(22, 163, 74, 0.14)} .st-lost-note {color: #b91c1c} .st-how {font-size: 0.85em; color: var(--neutral-500)}
""" + chart.CSS


# Accessible names that gradio gives no parameter for (both chat boxes are "chatbot conversation", a Markdown note
# or a table has none): selector -> (name, role or ""), set by NAMES_SCRIPT on load and on each later render.
NAMES = {
    "#chat-a [role=log]": ("conversation A", ""),
    "#chat-b [role=log]": ("conversation B", ""),
    "#chat-save-msg": ("save result", "status"),
    "#eval-metrics [role=grid]": ("metrics of each model", ""),
    "#eval-message": ("evaluation message", "status"),
    "#export-message": ("export message", "status"),
    "#merge-message": ("merge message", "status"),
    "#data-refresh": ("re-read the dataset list", ""),
}
NAMES_SCRIPT = """() => {
  const names = %s;
  const apply = () => {
    for (const [sel, [name, role]] of Object.entries(names)) for (const el of document.querySelectorAll(sel)) {
      if (el.getAttribute("aria-label") !== name) el.setAttribute("aria-label", name);
      if (role && el.getAttribute("role") !== role) el.setAttribute("role", role);
    }
  };
  apply();
  let due = false;  // a burst of renders is answered once; at rest nothing renders, so nothing runs
  new MutationObserver(() => { if (!due) { due = true; setTimeout(() => { due = false; apply(); }, 100); } })
    .observe(document.body, {childList: true, subtree: true});
}"""


def launch_kwargs() -> dict:
    """Theme, CSS and the early script for Blocks.launch (system fonts: the page loads nothing from the internet)."""
    from starlette.middleware import Middleware

    from studio.ui.early_script import EarlyScript

    fonts = [gr.themes.Font("system-ui"), gr.themes.Font("sans-serif")]
    mono = [gr.themes.Font("ui-monospace"), gr.themes.Font("monospace")]
    import json

    return {"theme": gr.themes.Default(font=fonts, font_mono=mono), "css": CSS, "js": NAMES_SCRIPT % json.dumps(NAMES),
            "app_kwargs": {"middleware": [Middleware(EarlyScript)]}}
