"""Export tab: pick a finished run, choose dtype, shard size and GGUF files, press Export; follow the phases and
see the verification, the files written, the Modelfile and the command that runs the model in Ollama.

The job is `python -m studio.export.job RUN_DIR` (see studio/export/job.py), started and stopped like training.
"""
from __future__ import annotations

import html
from pathlib import Path

import gradio as gr

from studio.run import events as ev
from studio.run import status as runs
from studio import spec as specmod
from studio.errors import is_user_error
from studio.ui import form, jobs, merge_panel, monitor, watch

TITLE = "Export"
FIELDS = ["export.dtype", "export.max_shard_size", "export.verify", "export.overwrite"]
GGUF_TYPES = list(specmod.GGUF_TYPES)  # q4_k_m first: what Ollama users run


def run_choices(runs_root: Path, workdir: Path) -> list:
    """Finished training (and merge) runs that hold an adapter/ or a model/ folder, newest first."""
    out = []
    for r in runs.list_runs(runs_root):
        if r.task not in ("train", "merge") or not ((r.path / "adapter").is_dir() or (r.path / "model").is_dir()):
            continue
        out.append((f"{r.name} ({r.method}, {r.status})", jobs.shown(r.path, workdir)))
    return out


def make_spec(source: str, top_model: str, export_dir: str, gguf: list, values: dict, runs_root: Path, workdir: Path):
    """The export JobSpec for the form: a run folder (its base model comes from the run) or a whole model folder."""
    from studio.model import source as export

    spec = form.values_to_spec(values, specmod.JobSpec(task="export"))
    spec.export.gguf = [q for q in GGUF_TYPES if q in (gguf or [])]
    spec.export.export_dir = export_dir.strip() or None
    source = (source or "").strip()
    if source:
        spec.model.adapter = str(jobs.inside(workdir, source, "run folder"))
        export.defaults_from_run(spec, set())
    else:
        spec.model.name_or_path = top_model or "default"
    name = Path(source).name if source else Path(spec.model.name_or_path).name
    spec.output_dir = str(runs.unique_dir(runs_root, f"{runs.stamp()}-export-{name}").resolve().relative_to(Path(workdir).resolve()))
    if spec.export.export_dir:
        spec.export.export_dir = str(jobs.inside(workdir, spec.export.export_dir, "export.export_dir"))
    export.target_dir(spec, export.find_source(spec))  # refuse bad input before the job starts
    return specmod.validate(spec)


def progress_html(events: list[dict], status: str, run: str | None) -> str:
    if not run:
        return monitor.idle_html("Pick a run and press Export.", "export progress")
    prog = [e for e in events if e["event"] == "progress"]
    last = prog[-1] if prog else {}
    total, done = last.get("total") or 0, last.get("done") or 0
    if status == "done":
        done = total
    phase = last.get("phase", "starting ...") if status == "running" else ""
    pct = 100 * done / total if total else 0
    bits = [f"phase {min(done + (status == 'running'), total)}/{total or '?'}" + (f": {html.escape(phase)}" if phase else "")]
    return monitor.bar_html(run, status, pct, bits, "export progress", step=done, total=total)


def _size(n: int) -> str:
    return f"{n / 1e9:.2f} GB" if n >= 1e9 else f"{n / 1e6:.1f} MB" if n >= 1e6 else f"{n / 1e3:.1f} kB"


def result_markdown(events: list[dict], status: str, run: str | None) -> str:
    """Verification, files, Modelfile and the Ollama command of a finished export (or why it failed)."""
    end = ev.final(events) if events else None
    if not run or not end:
        return ""
    if status != "done" and not end.get("files"):
        return monitor.final_message(events, status, run) if status != "aborted" else f"**{Path(run).name}: aborted**; the partial output was removed."
    lines = [f"**{'Exported' if status == 'done' else 'Export FAILED its check'}** to `{end['export_dir']}` "
             f"({_size(end.get('total_bytes', 0))}, {sum(end.get('timings', {}).values()):.0f} s)."]
    if status != "done":
        lines.append(f"\nFailed: {end.get('message', '')}")
    v = end.get("verify")
    if v:
        lines.append(f"\n**Verification**: {v['summary']}; top-1 agreement {v['top1_agreement']:.3f}. "
                     f"Sample: *{v['sample']['prompt']}* → {v['sample']['answer']}")
        for name, g in (v.get("gguf") or {}).items():
            lines.append(f"- `{name}` in llama.cpp: {'ok' if g['ok'] else 'FAILED'} · same tokens {g['same_tokens_as_tokenizer']} · "
                         f"next-token agreement {g['top1_agreement']:.3f} · largest logit difference {g['max_logit_diff']:.3g}")
    if end.get("why_not_merged"):
        lines.append(f"\nNot merged: {end['why_not_merged']}.")
    if end.get("gguf_skipped"):
        lines.append(f"\nGGUF: {end['gguf_skipped']}")
    lines.append("\n| file | size |\n|---|---|")
    lines += [f"| {name} | {_size(size)} |" for name, size in (end.get("files") or {}).items()]
    modelfile = Path(end["export_dir"]) / "Modelfile"
    if end.get("ollama_command") and modelfile.exists():
        lines.append(f"\n**Run it in Ollama**:\n```\n{end['ollama_command']}\n```\n`Modelfile`:\n```\n{modelfile.read_text()}```")
    return "\n".join(lines)


def build(ctx) -> None:
    workdir, runs_root = ctx.workdir, ctx.runs_root
    with gr.Row():
        source = gr.Dropdown(choices=run_choices(runs_root, workdir), value=None, allow_custom_value=True, scale=3,
                             label="run folder", elem_id="export-source",
                             info="A finished training run (adapter or full model). Empty: export the model chosen at the top.")
        refresh = gr.Button("↻ runs", scale=0, min_width=80, size="sm", elem_id="export-refresh")
        export_dir = gr.Textbox(label="export dir", info=specmod.field_help("export.export_dir"), placeholder="auto: <job folder>/export",
                                max_lines=1, scale=2, elem_id=form.elem_id("export.export_dir"))
    with gr.Row():
        fields = form.bind(FIELDS)
        gguf = gr.CheckboxGroup(GGUF_TYPES, value=["f16", "q8_0"], label="GGUF files", info=specmod.field_help("export.gguf"),
                                elem_id=form.elem_id("export.gguf"))
    with gr.Row():
        start_btn = gr.Button("Export", variant="primary", elem_id="export-start")
        abort_btn = gr.Button("Abort", variant="stop", elem_id="export-abort")
    message = gr.Markdown(elem_id="export-message")
    state = gr.State(monitor.follow(None))
    progress = gr.HTML(progress_html([], "", None), elem_id="export-progress")
    result = gr.Markdown(elem_id="export-result")

    refresh.click(lambda: gr.update(choices=run_choices(runs_root, workdir)), None, source)
    if ctx.pickers is not None:  # a run that finished after the page loaded is offered without a click
        ctx.pickers.add(source, lambda: run_choices(runs_root, workdir))

    def on_start(data):
        st = data[state]
        try:
            spec = make_spec(data[source], data[ctx.top["model.name_or_path"]], data[export_dir], data[gguf], form.by_name(data, fields),
                             runs_root, workdir)
            run_dir = jobs.start(spec, workdir, runs_root)
        except Exception as e:
            if not is_user_error(e):
                raise
            return st, f"Error: {e}", gr.skip()
        return monitor.follow(run_dir), f"Started `{spec.output_dir}` (log: `{spec.output_dir}/output.log`)", ""

    started = start_btn.click(on_start, {source, ctx.top["model.name_or_path"], export_dir, gguf, state, *fields.values()},
                              [state, message, result])

    def on_abort(st):
        return "ℹ️ " + jobs.abort(st, "export", "the partial output is removed")

    abort_btn.click(on_abort, state, message)

    def redraw(st, status, finished):
        return (progress_html(st["events"], status, st["run"]),
                result_markdown(st["events"], status, st["run"]) if finished else "")

    watch.follow_job(started, state, [progress, result], redraw)
    merge_panel.build(ctx)
