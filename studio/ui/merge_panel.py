"""The Export tab's merge panel: pick two or more LoRA runs, weights and a method, press Merge; the merged adapter is a
new run folder (studio/merge/job.py) that the top bar, Chat, Evaluate, the API panel and Export then offer.

    merge_panel.build(ctx)     # inside the Export tab
"""
from __future__ import annotations

import html
import json
from pathlib import Path

from studio import spec as specmod
from studio.run import events as ev
from studio.run import status as runs
from studio.ui import jobs, monitor

FIELDS = ["merge.method", "merge.density"]


def lora_runs(runs_root: Path, workdir: Path) -> list:
    """(label, folder) of the runs whose adapter/ is a LoRA adapter, newest first."""
    out = []
    for r in runs.list_runs(runs_root):
        config = r.path / "adapter" / "adapter_config.json"
        try:
            if json.loads(config.read_text()).get("peft_type") != "LORA":
                continue
        except (OSError, ValueError):
            continue
        out.append((f"{r.name} ({r.task}, {r.status})", jobs.shown(r.path, workdir)))
    return out


def weights_of(text: str | None) -> list[float]:
    """'1, 0.5' -> [1.0, 0.5]; empty -> [] (1 for each)."""
    parts = [p for p in (text or "").replace(",", " ").split() if p]
    try:
        return [float(p) for p in parts]
    except ValueError:
        raise specmod.SpecError(f"merge.weights: `{text}` is not a list of numbers like `1, 0.5`") from None


def make_spec(adapters: list, weights: str, method: str, density, out_dir: str, top_model: str, runs_root: Path, workdir: Path):
    """The merge JobSpec for the form: the base is the one the first adapter was trained on (else the top bar's)."""
    from studio.merge import with_defaults
    from studio.model.source import resolve_folder

    folders = [str(jobs.inside(workdir, a, "adapters to merge")) for a in adapters or []]
    base = top_model or "default"
    if folders:
        base = resolve_folder(folders[0]).trained_on or base
    spec = specmod.load(None, [], base={"task": "merge", "model": {"name_or_path": base},
                                        "merge": {"adapters": folders, "weights": weights_of(weights), "method": method,
                                                  "density": float(density) if density not in (None, "") else 0.5}})
    folder = (out_dir or "").strip() or runs.unique_dir(runs_root, f"{runs.stamp()}-merge-{method}")
    spec.output_dir = jobs.shown(jobs.inside(workdir, folder, "merged run folder"), workdir)
    return with_defaults(specmod.validate(spec))


def progress_html(events: list[dict], status: str, run: str | None) -> str:
    if not run:
        return monitor.idle_html("Pick two or more LoRA runs and press Merge.", "merge progress")
    prog = [e for e in events if e["event"] == "progress"]
    last = prog[-1] if prog else {}
    total, done = last.get("total") or 0, (last.get("total") or 0) if status == "done" else last.get("done") or 0
    phase = last.get("phase", "starting ...") if status == "running" else ""
    bits = [f"phase {min(done + (status == 'running'), total)}/{total or '?'}" + (f": {html.escape(phase)}" if phase else "")]
    if status in ("error", "crashed"):
        bits.append(html.escape((ev.final(events) or {}).get("message") or "the process ended without a final event; see output.log"))
    return monitor.bar_html(run, status, 100 * done / total if total else 0, bits, "merge progress", step=done, total=total)


def result_markdown(events: list[dict], status: str, run: str | None) -> str:
    end = ev.final(events) if events else None
    if not run or not end or status != "done":
        return ""
    lines = [f"**Merged** {len(end['adapters'])} adapters ({end['method']}, weights {end['weights']}, rank {end['rank']}) "
             f"into `{run}`: pick it in the top bar to chat with it, evaluate, serve or export it."]
    lines += [f"- *{html.escape(a['prompt'])}* → {html.escape(a['answer'])}" for a in end.get("answers", [])]
    return "\n".join(lines)


def build(ctx) -> None:
    import gradio as gr

    from studio.errors import is_user_error
    from studio.ui import form, watch

    workdir, runs_root = ctx.workdir, ctx.runs_root
    with gr.Accordion("Merge adapters: two or more LoRA runs of one base into one adapter", open=False, elem_id="merge-box"):
        with gr.Row():
            adapters = gr.Dropdown(choices=lora_runs(runs_root, workdir), value=[], multiselect=True, allow_custom_value=True,
                                   label="adapters to merge", info=specmod.field_help("merge.adapters"), scale=3,
                                   elem_id="merge-adapters")
            weights = gr.Textbox(label="weights", placeholder="1 for each", info=specmod.field_help("merge.weights"),
                                 max_lines=1, elem_id="merge-weights")
        with gr.Row():
            fields = form.bind(FIELDS)
            out_dir = gr.Textbox(label="merged run folder", placeholder="auto: runs/<time>-merge-<method>", max_lines=1,
                                 elem_id="merge-output")
        with gr.Row():
            start_btn = gr.Button("Merge", variant="primary", elem_id="merge-start")
            abort_btn = gr.Button("Abort merge", variant="stop", elem_id="merge-abort")
        message = gr.Markdown(elem_id="merge-message")
        state = gr.State(monitor.follow(None))
        progress = gr.HTML(progress_html([], "", None), elem_id="merge-progress")
        result = gr.Markdown(elem_id="merge-result")
    if ctx.pickers is not None:
        ctx.pickers.add(adapters, lambda: lora_runs(runs_root, workdir))

    def on_start(st, chosen, w, method, density, out, top_model):
        try:
            spec = make_spec(chosen, w, method, density, out, top_model, runs_root, workdir)
            run_dir = jobs.start(spec, workdir, runs_root)
        except Exception as e:
            if not is_user_error(e):
                raise
            return st, f"**Error:** {html.escape(str(e))}", gr.skip()
        return monitor.follow(run_dir), f"Started `{spec.output_dir}` (log: `{spec.output_dir}/output.log`)", ""

    started = start_btn.click(on_start, [state, adapters, weights, fields["merge.method"], fields["merge.density"], out_dir,
                                         ctx.top["model.name_or_path"]], [state, message, result])
    abort_btn.click(lambda st: "ℹ️ " + jobs.abort(st, "merge", "nothing is written"), state, message)

    def redraw(st, status, finished):
        return progress_html(st["events"], status, st["run"]), result_markdown(st["events"], status, st["run"]) if finished else ""

    watch.follow_job(started, state, [progress, result], redraw)
