"""The runs list: every run folder with its status; one selected shows its curves, log and spec; several
selected overlay their loss curves beside a table of only the spec fields that differ.
"""
from __future__ import annotations

import time
from pathlib import Path

import gradio as gr
import pandas as pd

from studio.launch import queue, sweep
from studio.run import events as ev
from studio.run import status as runs
from studio import spec as specmod
from studio.ui import chart, monitor

COLUMNS = ["run", "status", "model", "datasets", "method", "started", "steps", "last loss", "resume"]


def table(runs_root: Path) -> pd.DataFrame:
    rows = []
    for r in runs.list_runs(runs_root):
        started = time.strftime("%m-%d %H:%M", time.localtime(r.started)) if r.started else ""
        steps = f"{r.step}/{r.total_steps}" if r.total_steps else str(r.step or "")
        model = r.model if len(r.model) < 40 else "…" + r.model[-38:]
        rows.append([r.name, r.status, model, r.datasets, r.method, started, steps,
                     f"{r.last_loss:.4f}" if r.last_loss is not None else "", "can resume" if runs.resumable(r.path) else ""])
    return pd.DataFrame(rows, columns=COLUMNS)


QUEUE_COLUMNS = ["position", "run", "devices", "queued", "waits for"]


def queue_table(runs_root: Path) -> pd.DataFrame:
    """The jobs waiting for their devices, as `studio queue` lists them."""
    queue.revive(runs_root)  # a waiter gone after a reboot or a kill starts again
    rows = [[e.position, e.name, e.devices or "all", time.strftime("%H:%M:%S", time.localtime(e.queued)),
             e.waits_for or "its devices are free: starting"] for e in queue.entries(runs_root)]
    return pd.DataFrame(rows, columns=QUEUE_COLUMNS)


def queue_action(runs_root: Path, action: str, run: str, to) -> str:
    """Cancel or move a waiting job (the same calls as `studio queue cancel|move`); a message for the page."""
    from studio.errors import is_user_error

    if not run:
        return "pick a waiting run first (click its row)"
    try:
        if action == "cancel":
            queue.cancel(run, runs_root)
            return f"cancelled {run}: it will not start"
        to = max(1, int(to)) if isinstance(to, (int, float)) and abs(to) < 1e9 else 1
        queue.move(run, to, runs_root)
        return f"moved {run} to position {to}"
    except Exception as e:
        if not is_user_error(e):
            raise
        return f"Error: {e}"


def sweep_table(folder: Path) -> pd.DataFrame:
    """A sweep's runs side by side (launch.sweep.compare): the fields that differ, losses, the best row marked."""
    t = sweep.compare(sweep.points_of(folder))
    return pd.DataFrame(t["rows"], columns=t["columns"])


def resume(run: str, workdir: Path, runs_root: Path) -> str:
    """Continue a crashed or aborted run from its last checkpoint (what `studio train --resume RUN` does)."""
    from studio.errors import is_user_error
    from studio.launch.follow import resume_spec
    from studio.ui import jobs

    try:
        spec = resume_spec(runs_root / run)
        spec.output_dir = str(runs_root / run)
        out = jobs.start(spec, workdir, runs_root)
    except Exception as e:
        if not is_user_error(e):
            raise
        return f"Error: {e}"
    note = jobs.notes.get(str(out))
    return f"resuming {run}: {note}" if note else f"resuming {run} from its last checkpoint"


def spec_dict(run_dir: Path) -> dict:
    try:
        return specmod.to_dict(specmod.load(run_dir / "spec.yaml"))
    except (OSError, specmod.SpecError):
        return {}


def differing(run_dirs: list[Path]) -> pd.DataFrame:
    """Spec fields whose values differ between the runs: one row per field, one column per run."""
    flat = [specmod.flatten(spec_dict(p)) for p in run_dirs]
    keys = sorted({k for f in flat for k in f} - {"output_dir"})
    rows = [[k] + [str(f.get(k, "")) for f in flat] for k in keys if len({str(f.get(k)) for f in flat}) > 1]
    return pd.DataFrame(rows, columns=["field"] + [p.name for p in run_dirs])


def overlay(run_dirs: list[Path]) -> pd.DataFrame:
    frames = [monitor.curves(ev.read_all(p), run=p.name) for p in run_dirs]
    return pd.concat(frames, ignore_index=True) if frames else monitor.curves([])


def loss_chart(df: pd.DataFrame | None) -> str:
    return chart.svg(df, "step", "value", "series", "loss of the selected runs", "loss")


def build(ctx, follow_state):
    """The runs list; Follow puts a run in `follow_state`. Returns the list and the Follow event (the monitor chains
    its watch to it)."""
    runs_root = ctx.runs_root
    gr.Markdown("### Runs")
    with gr.Row():
        refresh = gr.Button("↻ refresh", size="sm", scale=0, min_width=100, elem_id="refresh-runs")
        pick = gr.Dropdown(choices=[], value=[], multiselect=True, label="selected runs",
                           info="Click a row to select it; add more here to compare their curves.", elem_id="run-pick", scale=4)
        follow_btn = gr.Button("Follow in monitor", size="sm", scale=0, min_width=160, elem_id="follow-run")
        resume_btn = gr.Button("Resume", size="sm", scale=0, min_width=100, elem_id="resume-run")
    resume_note = gr.Markdown("", elem_id="resume-note")
    listing = gr.Dataframe(value=table(runs_root), headers=COLUMNS, interactive=False, elem_id="runs-table", max_height=320)
    with gr.Row():
        with gr.Column(scale=2):
            plot = gr.HTML(loss_chart(None), elem_id="runs-plot")
        diff = gr.Dataframe(value=pd.DataFrame(columns=["field"]), label="spec fields that differ", interactive=False, scale=1, elem_id="runs-diff")
    with gr.Accordion("compare a sweep", open=True):
        sweep_pick = gr.Dropdown(choices=[], value=None, label="sweep folder", elem_id="sweep-pick",
                                 info="Its runs side by side (click a header to sort); their curves overlay above.")
        sweep_cmp = gr.Dataframe(value=pd.DataFrame(columns=["run"]), interactive=False, elem_id="sweep-compare")
    with gr.Accordion("queue: jobs waiting for their devices", open=True):
        queue_list = gr.Dataframe(value=queue_table(runs_root), headers=QUEUE_COLUMNS, interactive=False, elem_id="queue-table")
        with gr.Row():
            queue_run = gr.Textbox(label="waiting run", scale=3, elem_id="queue-run", info="Click a row of the queue to pick it.")
            queue_to = gr.Number(value=1, precision=0, label="move to position", scale=1, elem_id="queue-to")
            cancel_btn = gr.Button("Cancel it", size="sm", scale=0, min_width=110, elem_id="queue-cancel")
            move_btn = gr.Button("Move", size="sm", scale=0, min_width=90, elem_id="queue-move")
        queue_note = gr.Markdown("", elem_id="queue-note")
    with gr.Accordion("log and spec of the selected run", open=False):
        with gr.Row():
            log = gr.Textbox(lines=16, max_lines=16, label="output.log (end)", elem_id="runs-log")
            spec_box = gr.Code(language="yaml", label="spec.yaml", elem_id="runs-spec")

    def names():
        return [r.name for r in runs.list_runs(runs_root)]

    def on_refresh(selected):
        have = names()
        return table(runs_root), gr.update(choices=have, value=[s for s in selected or [] if s in have])

    def others():
        return queue_table(runs_root), gr.update(choices=[p.name for p in sweep.sweep_folders(runs_root)])

    refresh.click(on_refresh, pick, [listing, pick]).then(others, None, [queue_list, sweep_pick])
    ctx.demo.load(on_refresh, pick, [listing, pick]).then(others, None, [queue_list, sweep_pick])

    def on_sweep(name):
        if not name or not (runs_root / name).is_dir():
            return gr.skip(), pd.DataFrame(columns=["run"])
        points = [runs.display_name(p) for p in sweep.points_of(runs_root / name)]
        return gr.update(choices=names(), value=points), sweep_table(runs_root / name)

    sweep_pick.change(on_sweep, sweep_pick, [pick, sweep_cmp])
    resume_btn.click(lambda sel: resume(sel[0], ctx.workdir, runs_root) if sel else "select a crashed or aborted run first",
                     pick, resume_note).then(lambda: table(runs_root), None, listing)
    def on_queue_row(evt: gr.SelectData):
        row = evt.row_value or []
        return row[1] if len(row) > 1 else gr.skip()

    queue_list.select(on_queue_row, None, queue_run)
    for btn, action in ((cancel_btn, "cancel"), (move_btn, "move")):
        btn.click(lambda run, to, a=action: queue_action(runs_root, a, run, to), [queue_run, queue_to], queue_note).then(
            lambda: (queue_table(runs_root), table(runs_root)), None, [queue_list, listing])
    listing.change(lambda sel: gr.update(choices=names(), value=sel), pick, pick)
    if getattr(ctx, "pickers", None) is not None:  # a run that starts or ends changes the list: the pickers read again
        ctx.pickers.refresh_on(listing.change)

    def on_row(evt: gr.SelectData):
        row = evt.row_value or []
        return [row[0]] if row else gr.skip()

    listing.select(on_row, None, pick)

    def on_pick(selected):
        dirs = [runs_root / s for s in selected or [] if (runs_root / s).is_dir()]
        if not dirs:
            return loss_chart(None), pd.DataFrame(columns=["field"]), "", ""
        if len(dirs) == 1:
            events = ev.read_all(dirs[0])
            spec_text = (dirs[0] / "spec.yaml").read_text() if (dirs[0] / "spec.yaml").exists() else ""
            return loss_chart(monitor.curves(events, run=dirs[0].name)), pd.DataFrame(columns=["field"]), monitor.log_tail(dirs[0], 20_000), spec_text
        return loss_chart(overlay(dirs)), differing(dirs), "", ""

    pick.change(on_pick, pick, [plot, diff, log, spec_box])

    def on_follow(selected):
        return monitor.follow(runs_root / selected[0]) if selected else gr.skip()

    return listing, follow_btn.click(on_follow, pick, follow_state)
