"""Train tab: the form (built from spec fields), Preview command / Save / Load / Start / Abort, the live monitor.

To add fields, put their dotted names in GROUPS (always shown), METHOD_GROUPS (shown for those
finetuning types only) or MORE (the closed "More options" section): the widget, label, help text and
the form <-> spec conversion follow from the spec field.
"""
from __future__ import annotations

import contextlib
import html
import threading
import time
from pathlib import Path

import gradio as gr

from studio.run import status as runs
from studio import spec as specmod
from studio.data import preference, registry, registry_scan
from studio.errors import is_user_error
from studio.ui import chart, dataset_view, form, jobs, launch_fields, monitor, runs_view, stage_fields, watch

TITLE = "Train"

GROUPS = [
    ["method.stage", "data.dataset_dir", "data.dataset", "data.eval_dataset", "data.val_size"],
    ["train.learning_rate", "train.num_train_epochs", "train.max_steps", "data.max_samples", "data.cutoff_len"],
    ["train.per_device_train_batch_size", "train.gradient_accumulation_steps", "train.lr_scheduler_type", "train.warmup_ratio",
     "train.compute_dtype"],
    ["train.logging_steps", "train.save_steps", "data.packing", "output_dir"],
]
METHOD_GROUPS = [  # (title, finetuning types, fields); a field is drawn once, so one shared by several types has its own group
    ("LoRA", ["lora"], ["method.lora.rank", "method.lora.dora", "method.lora.rslora", "method.lora.pissa", "method.lora.loraplus_lr_ratio",
                        "method.lora.layers", "method.lora.modules_to_save"]),
    ("AdaLoRA", ["adalora"], ["method.adalora.init_rank", "method.adalora.target_rank", "method.adalora.tinit", "method.adalora.tfinal",
                              "method.adalora.delta_t"]),
    ("LoRA scaling", ["lora", "adalora"], ["method.lora.alpha", "method.lora.dropout"]),
    ("Adapted modules", ["lora", "adalora", "ia3"], ["method.lora.target"]),
    ("Freeze tuning", ["freeze"], ["method.freeze.trainable_layers", "method.freeze.trainable_modules", "method.freeze.extra_modules"]),
    ("Virtual tokens", ["prefix", "prompt", "ptuning", "ptuning_v2"], ["method.prompt.num_virtual_tokens"]),
    ("Prompt encoder", ["prefix", "ptuning"], ["method.prompt.encoder_hidden_size"]),
    ("Prompt tuning", ["prompt"], ["method.prompt.init_text"]),
]
MORE = ["train.warmup_steps", "train.weight_decay", "train.max_grad_norm", "train.optim", "train.gradient_checkpointing",
        "train.eval_steps", "train.load_best_model_at_end", "train.metric_for_best_model", "train.early_stopping_patience",
        "train.save_total_limit", "train.seed", "train.resume_from_checkpoint", "data.train_on_prompt",
        "data.mask_history", "data.group_by_length", "model.attn_implementation", "train.liger_kernel", "train.neftune_alpha", "model.quantization_type", "model.double_quantization", "train.report_to",
        "train.report_offline", "train.benchmarks"]
# The page's first spec: what examples/identity_lora.yaml trains (identity, with alpaca_demo mixed in).
DEFAULTS = ["output_dir=", "data.dataset=[identity,alpaca_demo]", "data.cutoff_len=256", "data.max_samples=32", "train.learning_rate=2.0e-3", "train.num_train_epochs=2",
            "train.warmup_ratio=0.05", "train.save_steps=10"]
SPEC_DIR = "specs"
PLOT_EVERY = 5.0  # seconds between redraws of the loss and learning-rate curves of a running job


def default_spec() -> specmod.JobSpec:
    data = specmod.parse_overrides(DEFAULTS)
    data["output_dir"] = "runs/auto"
    return specmod.from_dict(specmod.JobSpec, data)


def _rows(names: list[str], special: dict, per_row: int = 5) -> dict:
    out = {}
    for i in range(0, len(names), per_row):
        with gr.Row(equal_height=False):
            out.update(form.bind(names[i:i + per_row], special))
    return out


def _message(text: str, kind: str = "info") -> str:
    return f"**{kind}:** {text}" if kind == "error" else text


def registry_view(workdir: Path, folder: str | None) -> tuple[list[str], str]:
    """(usable dataset names, a note naming every problem of the folder's dataset_info.json, or "")."""
    try:
        ddir = jobs.inside(workdir, (folder or "").strip() or "data", "data.dataset_dir")
    except specmod.SpecError as e:
        return [], _message(str(e), "error")
    entries, problems = registry_scan.scan(ddir)
    if not problems:
        return list(entries), ""
    shown = str(Path(folder or "data"))
    lines = [html.escape(p.replace(str(ddir), shown)) for p in problems]
    head = f"**{shown}/{registry.INFO}:** " + ("these entries are offered: " + ", ".join(entries) if entries else "no dataset is offered")
    return list(entries), head + "\n" + "\n".join(f"- {line}" for line in lines)


def short_note(spec: specmod.JobSpec, read_data: bool = True) -> str:
    """A line under the message when the run is too short to learn (spec.stages.too_short), else ""; with `read_data`
    the rows of a run by epochs come from the data's preview (cached: Start has just checked the data)."""
    examples = None
    if read_data and spec.train.max_steps <= 0:
        with contextlib.suppress(Exception):
            examples = (jobs.preview(spec).get("stats") or {}).get("examples")
    line = specmod.too_short(spec, examples)
    return f"  \n⚠️ {line}" if line else ""


def build(ctx) -> None:
    workdir, runs_root = ctx.workdir, ctx.runs_root
    base = default_spec()
    data_dir = base.data.dataset_dir
    found, note = registry_view(workdir, data_dir)
    # custom values are allowed so that a name no longer registered reaches the spec's own check (which names it)
    # instead of gradio's choice check; the page drops such names when it re-reads the registry
    special = {
        "data.dataset": form.widget("data.dataset", choices=found, allow_custom_value=True, scale=2, render=False),
        "data.eval_dataset": form.widget("data.eval_dataset", choices=found, allow_custom_value=True, render=False),
        "output_dir": gr.Textbox(value="", label="output dir", info=specmod.field_help("output_dir") + " Empty: a new runs/<time>-... folder.",
                                 placeholder="auto: runs/<time>-<method>-<datasets>", elem_id=form.elem_id("output_dir"), max_lines=1, render=False),
    }
    registry_note = gr.Markdown(note, elem_id="registry-note")
    stage_note = gr.Markdown(elem_id="stage-note")  # what choosing a stage changed: its defaults, the datasets dropped
    fields: dict = {}
    for group in GROUPS:
        fields.update(_rows(group, special))
    refresh_data = gr.Button("↻ re-read dataset_info.json", size="sm", elem_id="refresh-data")
    method_boxes = []
    for title, types, names in METHOD_GROUPS:
        with gr.Accordion(f"{title} options", open=True, visible=base.method.finetuning_type in types) as box:
            fields.update(_rows([n for n in names if n not in fields], {}))
        method_boxes.append((box, types))
    stage_boxes = stage_fields.build(fields, _rows, base.method.stage)
    with gr.Accordion("More options", open=False):
        fields.update(_rows(MORE, {}))
    with gr.Accordion("Devices, processes and DeepSpeed", open=False, elem_id="launch-group"):
        fields.update(_rows(launch_fields.NAMES, launch_fields.special(), per_row=4))
    estimate_box = gr.Markdown(elem_id="memory-estimate")

    by_name = {**ctx.top, **fields}
    names, comps = list(by_name), list(by_name.values())
    for comp, value in zip(comps, form.spec_to_values(base, names)):
        comp.value = value
    fields["output_dir"].value = ""
    for name in ("data.dataset", "data.eval_dataset"):
        fields[name].value = [v for v in fields[name].value or [] if v in found]
    base_state = gr.State(specmod.to_dict(base))
    form_inputs = {*comps, base_state}  # the form's handlers get {component: value} and read it through spec_from

    def spec_from(data: dict, auto_dir=True) -> specmod.JobSpec:
        vals = form.by_name(data, by_name)
        if not str(vals.get("output_dir") or "").strip():
            vals["output_dir"] = "runs/auto"
        spec = form.values_to_spec(vals, specmod.from_dict(specmod.JobSpec, data[base_state]))
        if spec.output_dir == "runs/auto" and auto_dir:
            spec.output_dir = jobs.auto_output_dir(runs_root, spec, workdir)
        return spec

    dataset_view.build(ctx, spec_from, form_inputs, fields)
    launch_fields.wire(ctx, fields, form_inputs, spec_from, estimate_box)
    # check the default data once now, in the background, so that the first Start does not wait for it
    threading.Thread(target=jobs.preview, args=(base,), daemon=True).start()

    with gr.Row():
        preview_btn = gr.Button("Preview command", elem_id="preview-cmd")
        spec_path = gr.Textbox(value=f"{SPEC_DIR}/train.yaml", label="spec file", show_label=False, container=False,
                               elem_id="spec-path", scale=2, info="spec file (inside the working folder)")
        save_btn = gr.Button("Save spec", elem_id="save-spec")
        load_btn = gr.Button("Load spec", elem_id="load-spec")
        start_btn = gr.Button("Start", variant="primary", elem_id="start")
        abort_btn = gr.Button("Abort", variant="stop", elem_id="abort")
    message = gr.Markdown(elem_id="message")
    command_box = gr.Code(label="command and spec", language="yaml", visible=False, elem_id="command")

    gr.Markdown("### Run monitor")
    state = gr.State(monitor.follow(None))
    # a followed run is drawn by one long event (ui/watch.py) that sends the page only what changed, until the run ends
    open_logs: set[str] = set()  # the browser sessions whose output.log section is open
    progress = gr.HTML(monitor.progress_html([], "", None), elem_id="progress")
    final = gr.Markdown(elem_id="final")  # the outcome: metrics, or the error and the end of the log
    with gr.Row():
        with gr.Column(scale=2, min_width=240):  # a gr.HTML takes no scale of its own
            loss_plot = gr.HTML(chart.svg(None, "step", "value", title="loss", width=500), elem_id="loss-plot")
        with gr.Column(scale=1, min_width=160):
            lr_plot = gr.HTML(chart.svg(None, "step", "learning_rate", title="learning rate", width=260), elem_id="lr-plot")
        with gr.Column(scale=2, min_width=240):
            stage_plot = gr.HTML(chart.svg(None, "step", "value", title="rewards and margins", width=500), elem_id="stage-plot")
    samples = gr.HTML("", elem_id="grpo-samples")  # GRPO: the latest completions and their rewards
    with gr.Accordion("output.log", open=False) as log_group:
        log_box = gr.Textbox(lines=14, max_lines=14, autoscroll=True, show_label=False, elem_id="log")
    table, followed = runs_view.build(ctx, state)

    # --- handlers ---------------------------------------------------------------------------------------
    def on_type(ftype):
        return [gr.update(visible=ftype in types) for _, types in method_boxes]

    ctx.top["method.finetuning_type"].change(on_type, ctx.top["method.finetuning_type"], [b for b, _ in method_boxes])
    stage_fields.wire(fields["method.stage"], stage_boxes, fields["data.dataset_dir"],
                      {n: fields[n] for n in ("data.dataset", "data.eval_dataset")}, workdir, fields, stage_note,
                      {k: specmod.get(base, k) for k in stage_fields.form_values("sft", {})})

    def on_refresh_data(folder, chosen, chosen_eval):
        found, note = registry_view(workdir, folder)
        keep = lambda values: [v for v in values or [] if v in found]  # noqa: E731
        return gr.update(choices=found, value=keep(chosen)), gr.update(choices=found, value=keep(chosen_eval)), note

    ds_inputs = [fields["data.dataset_dir"], fields["data.dataset"], fields["data.eval_dataset"]]
    ds_outputs = [fields["data.dataset"], fields["data.eval_dataset"], registry_note]
    refresh_data.click(on_refresh_data, ds_inputs, ds_outputs)
    if ctx.pickers is not None:  # a dataset registered after the load (saved from Chat, added in Data) is offered
        def fitting(stage, folder):
            return preference.fitting(workdir / (folder or "data"), stage)

        for n in ("data.dataset", "data.eval_dataset"):
            ctx.pickers.add(fields[n], fitting, on_load=False, inputs=(fields["method.stage"], fields["data.dataset_dir"]))
    fields["data.dataset_dir"].submit(on_refresh_data, ds_inputs, ds_outputs)

    def on_preview(data):
        try:
            spec = spec_from(data)
        except specmod.SpecError as e:
            return _message(str(e), "error"), gr.update(visible=False)
        text = (f"# save this spec as {SPEC_DIR}/train.yaml, then run:\n#   studio train {SPEC_DIR}/train.yaml\n"
                f"# which starts:\n{launch_fields.command_text(spec)}\n\n{specmod.dumps(spec)}")
        return short_note(spec, read_data=False).strip(), gr.update(value=text, visible=True)

    preview_btn.click(on_preview, form_inputs, [message, command_box])

    def on_save(data):
        path = data[spec_path]
        try:
            target = jobs.inside(workdir, path or f"{SPEC_DIR}/train.yaml", "spec file")
            spec = spec_from(data, auto_dir=False)
            if spec.output_dir == "runs/auto":
                spec.output_dir = jobs.auto_output_dir(runs_root, spec, workdir)
            specmod.dump(spec, target)
        except specmod.SpecError as e:
            return _message(str(e), "error")
        return _message(f"saved {target.relative_to(workdir.resolve())}; run it with `studio train {path}`", "ok")

    save_btn.click(on_save, form_inputs | {spec_path}, message)

    def on_load(path):
        try:
            target = jobs.inside(workdir, path, "spec file")
            spec = specmod.load(target)
        except specmod.SpecError as e:
            return [gr.update()] * len(comps) + [gr.update(), _message(str(e), "error")]
        values = form.spec_to_values(spec, names)
        return values + [specmod.to_dict(spec), _message(f"loaded {path}", "ok")]

    load_btn.click(on_load, spec_path, comps + [base_state, message])

    def on_start(data):
        st = data[state]
        try:
            spec = spec_from(data)
            run_dir = jobs.start(spec, workdir, runs_root, check_data=jobs.preview)
        except Exception as e:
            if not is_user_error(e):
                raise
            return st, _message(str(e), "error"), gr.skip()
        rel, short = spec.output_dir, short_note(spec)
        if jobs.notes.get(str(run_dir)):  # queued: the watch follows it until it starts and ends
            queued = _message(f"`{rel}` {jobs.notes[str(run_dir)]}", "info") + short
            return monitor.follow(run_dir), queued, runs_view.table(runs_root)
        return (monitor.follow(run_dir), _message(f"started `{rel}`: log in `{rel}/output.log`", "ok") + short,
                runs_view.table(runs_root))

    started = start_btn.click(lambda: _message("checking the data and starting ..."), None, message, queue=False).then(
        on_start, form_inputs | {state}, [state, message, table])

    def on_abort(st):
        return _message(jobs.abort(st, "job", "it saves a checkpoint and ends"), "info")

    abort_btn.click(on_abort, state, message)

    def draw(st, session):
        """What changed in the followed run since `st`: (state, whether it has ended, updates of drawn[1:])."""
        was = st.get("status")
        st, changed, status, ended = watch.read(st)  # a finished run is drawn once more, then the watch ends
        log = gr.skip()
        if session in open_logs:  # the log box is sent only while its section is open, and only when output.log grew
            size = monitor.log_size(st["run"])
            if size != st.get("log_size"):
                st, log = {**st, "log_size": size}, monitor.log_tail(st["run"])
        if not changed:
            return st, ended, (gr.skip(), gr.skip(), gr.skip(), gr.skip(), log, gr.skip(), gr.skip(), gr.skip())
        evs, run = st["events"], st["run"]
        finished = status in watch.FINISHED
        # the curves are redrawn at most every PLOT_EVERY seconds while a run trains (drawing them costs the browser
        # more than the rest of the page), and at once when it ends
        new_points = "drawn" not in st or any(e["event"] in ("log", "eval") for e in evs[st["drawn"]:])
        redraw = finished or (new_points and time.time() - st.get("plotted", 0) >= PLOT_EVERY)
        plots = (gr.skip(), gr.skip(), gr.skip(), gr.skip())
        if redraw:  # of the curves and the samples, only those that differ from what the page shows are sent
            new = (chart.svg(monitor.curves(evs), "step", "value", "series", "loss", "loss", width=500),
                   chart.svg(monitor.lr_curve(evs), "step", "learning_rate", title="learning rate", width=260),
                   chart.svg(stage_fields.curves(evs), "step", "value", "series", "rewards and margins", width=500),
                   stage_fields.samples_html(evs))
            shown = st.get("shown") or (None,) * len(new)
            plots = tuple(v if v != old else gr.skip() for v, old in zip(new, shown))
            st = {**st, "drawn": len(evs), "plotted": time.time(), "shown": new}
        final_text = monitor.final_message(evs, status, run) if finished else ""  # sent when it changes, as the curves
        final_out = final_text if st.get("final") != final_text else gr.skip()
        st = {**st, "final": final_text}
        return st, ended, (monitor.progress_html(evs, status, run), *plots[:2], final_out, log,
                           runs_view.table(runs_root) if status != was else gr.skip(), *plots[2:])  # the runs list: on a new status

    drawn = [state, progress, loss_plot, lr_plot, final, log_box, table, stage_plot, samples]

    watch_run = watch.watcher(draw)

    def on_log_open(st, request: gr.Request):
        open_logs.add(request.session_hash)  # a running watch sends the log from now on, when it grows
        return monitor.log_tail(st["run"]) if st.get("run") else gr.skip()

    def on_log_close(request: gr.Request):
        open_logs.discard(request.session_hash)

    log_group.expand(on_log_open, state, log_box)
    log_group.collapse(on_log_close, None, None)

    def on_load_page(st, folder, chosen, chosen_eval):
        """Reattach: follow the newest running job (or keep following what this tab followed); re-read the registry."""
        data = on_refresh_data(folder, chosen, chosen_eval)
        if not st.get("run"):
            active = [r for r in runs.list_runs(runs_root) if r.status in ("running", "queued") and r.task == "train"]
            st = monitor.follow(active[0].path) if active else st
        return (st, *data)

    loaded = ctx.demo.load(on_load_page, [state] + ds_inputs, [state] + ds_outputs)
    # each follow starts a watch (the page's load draws a followed run once, and goes on if it runs)
    for event in (started, followed, loaded):
        event.then(watch_run, state, drawn, show_progress="hidden", concurrency_limit=None)
