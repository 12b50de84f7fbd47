"""Data tab: generate a dataset (self-instruct from seed tasks, or a teacher's answers to a dataset's prompts),
watch its progress, and read what was kept and what was dropped and why.

The job is `python -m studio.generate.job RUN_DIR` (studio/generate/), started and stopped like the other jobs;
the model comes from the top bar (model, adapter, template) when the generator is local.
"""
from __future__ import annotations

import html
from pathlib import Path

import gradio as gr
import pandas as pd

from studio.run import status as runs
from studio import spec as specmod
from studio.data import registry
from studio.errors import is_user_error
from studio.generate import store
from studio.ui import form, jobs, monitor, watch

TITLE = "Data"
FIELDS = ["generate.mode", "generate.output_dataset", "generate.num_instructions", "generate.batch_size",
          "generate.similarity_threshold", "generate.max_new_tokens", "generate.temperature", "generate.replace_outputs"]
ENDPOINT = ["generate.generator", "generate.base_url", "generate.endpoint_model", "generate.api_key_env", "generate.concurrency"]
SHOWN = 200  # rows of kept / dropped samples shown


def make_spec(values: dict, top: dict, runs_root: Path, workdir: Path) -> specmod.JobSpec:
    spec = form.values_to_spec({**values, **top}, specmod.JobSpec(task="generate"))
    spec.data.dataset_dir = str(jobs.inside(workdir, spec.data.dataset_dir, "data.dataset_dir"))
    name = f"{runs.stamp()}-generate-{spec.generate.output_dataset}"
    spec.output_dir = str(runs.unique_dir(runs_root, name).resolve().relative_to(Path(workdir).resolve()))
    return specmod.validate(spec)  # jobs.start then applies launch.preflight's rules


def progress_html(events: list[dict], status: str, run: str | None) -> str:
    if not run:
        return monitor.idle_html("Choose the settings and press Generate.", "generation progress")
    prog = [e for e in events if e["event"] == "progress"]
    last = prog[-1] if prog else {}
    total, done = last.get("total") or 0, last.get("done") or 0
    pct = 100 * done / total if total else 0
    dropped = ", ".join(f"{k} {v}" for k, v in (last.get("dropped") or {}).items()) or "none"
    bits = [f"kept {last.get('kept', 0)}/{total or '?'} {html.escape(str(last.get('unit', '')))}",
            f"generated {last.get('generated', 0)}", f"samples {last.get('samples', 0)}",
            f"dropped: {html.escape(dropped)}", f"failed requests {last.get('failed_requests', 0)}"]
    if last.get("phase") and status == "running":
        bits.append(f"phase: {html.escape(last['phase'])}")
    return monitor.bar_html(run, status, pct, bits, "generation progress", kept=last.get('kept', 0), total=total)


def tables(run: str | None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Kept samples (or instructions still waiting for their output) and dropped ones, from the run folder."""
    if not run:
        return pd.DataFrame(columns=["instruction", "input", "output"]), pd.DataFrame(columns=["stage", "reason", "text", "detail"])
    d = Path(run)
    samples = store.read_jsonl(d / store.SAMPLES)
    done = {s["id"] for s in samples}
    rows = [{"instruction": s.get("instruction", ""), "input": s.get("input", ""), "output": s.get("output", "")} for s in samples]
    rows += [{"instruction": k["instruction"], "input": "", "output": "(waiting)"} for k in store.read_jsonl(d / store.INSTRUCTIONS)
             if k["id"] not in done]
    dropped = [{"stage": x.get("stage"), "reason": x.get("reason"), "text": str(x.get("text", ""))[:300],
                "detail": ", ".join(f"{k}={v}" for k, v in x.items() if k not in ("stage", "reason", "text", "id", "answer"))}
               for x in store.read_jsonl(d / store.DROPPED)]
    return pd.DataFrame(rows[-SHOWN:], columns=["instruction", "input", "output"]), \
        pd.DataFrame(dropped[-SHOWN:], columns=["stage", "reason", "text", "detail"])


def result_markdown(events: list[dict], status: str, run: str | None) -> str:
    end = events[-1] if events and events[-1]["event"] in ("done", "error", "aborted") else None
    if not run or not end:
        return ""
    if status == "done":
        return (f"**Done**: {end['records']} record(s) in `{end['file']}`, registered as **`{end['dataset']}`**: pick it in the "
                f"Train tab's datasets (↻ re-reads the list) to train on it. Report: `{end['report']}`.")
    return monitor.final_message(events, status, run)


def build(ctx) -> None:
    workdir, runs_root = ctx.workdir, ctx.runs_root
    data_dir = workdir / "data"
    with gr.Row():
        source = gr.Dropdown(choices=registry.names(data_dir), value="seed_tasks" if "seed_tasks" in registry.names(data_dir) else None,
                             allow_custom_value=True, label="source", info=specmod.field_help("generate.source"),
                             elem_id=form.elem_id("generate.source"), scale=2)
        refresh = gr.Button("↻", scale=0, min_width=40, size="sm", elem_id="data-refresh")
    with gr.Row():
        fields = form.bind(FIELDS)
    with gr.Accordion("Generator: local model (top bar) or an OpenAI-compatible endpoint", open=False):
        with gr.Row():
            endpoint = form.bind(ENDPOINT)
    with gr.Row():
        start_btn = gr.Button("Generate", variant="primary", elem_id="data-start")
        abort_btn = gr.Button("Abort", variant="stop", elem_id="data-abort")
    message = gr.Markdown(elem_id="data-message")
    state = gr.State(monitor.follow(None))
    progress = gr.HTML(progress_html([], "", None), elem_id="data-progress")
    result = gr.Markdown(elem_id="data-result")
    kept0, dropped0 = tables(None)
    gr.Markdown("**Kept**")
    kept = gr.Dataframe(kept0, wrap=True, elem_id="data-kept", interactive=False)
    gr.Markdown("**Dropped** (why, and what it resembled)")
    dropped = gr.Dataframe(dropped0, wrap=True, elem_id="data-dropped", interactive=False)

    refresh.click(lambda: gr.update(choices=registry.names(data_dir)), None, source)

    inputs = {**{n: fields[n] for n in FIELDS}, **{n: endpoint[n] for n in ENDPOINT}}
    top = {n: ctx.top[n] for n in ("model.name_or_path", "model.adapter", "model.template")}

    def on_start(data):
        st, vals = data[state], form.by_name(data, inputs)
        try:
            spec = make_spec({**vals, "generate.source": data[source] or ""}, form.by_name(data, top), runs_root, workdir)
            run_dir = jobs.start(spec, workdir, runs_root)
        except Exception as e:
            if not is_user_error(e):
                raise
            return st, f"Error: {e}", gr.skip()
        return monitor.follow(run_dir), f"Started `{spec.output_dir}` (log: `{spec.output_dir}/output.log`)", ""

    started = start_btn.click(on_start, {source, state, *inputs.values(), *top.values()}, [state, message, result])

    def on_abort(st):
        return "ℹ️ " + jobs.abort(st, "generation", "what was kept stays in its run folder; start it again to go on")

    abort_btn.click(on_abort, state, message)

    def redraw(st, status, finished):
        k, d = tables(st["run"])
        return (progress_html(st["events"], status, st["run"]),
                result_markdown(st["events"], status, st["run"]) if finished else "", k, d)

    watch.follow_job(started, state, [progress, result, kept, dropped], redraw)
