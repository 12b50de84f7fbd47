"""The Chat tab's API panel: start `studio serve` for the top bar's model and adapter as a job (run folder, events,
this machine only), show where it listens, stop it. The job outlives the page, like every job.
"""
from __future__ import annotations

import html
from pathlib import Path

from studio.run import events as ev
from studio.run import status as runs
from studio import spec as specmod
from studio.serve.snippets import served_name


def server_spec(workdir: Path, runs_root: Path, model: str | None, adapter: str | None, port) -> specmod.JobSpec:
    """The serve job for the chosen model (and adapter, served by its run's name) on 127.0.0.1:PORT."""
    from studio.chat.session import resolve

    try:
        port = int(port)
    except (TypeError, ValueError):
        raise specmod.SpecError(f"port: `{port}` is not a number; 8000 is usual") from None
    base = resolve(model or None, adapter or None).model  # refuses a missing adapter or one trained on another base
    name = served_name(model, adapter)
    out = runs.unique_dir(runs_root, f"{runs.stamp()}-serve-{name}")
    try:
        out = out.resolve().relative_to(Path(workdir).resolve())
    except ValueError:
        pass
    data = {"task": "serve", "output_dir": str(out), "model": {"name_or_path": base},
            "serve": {"adapters": [f"{name}={adapter}"] if adapter else [], "host": "127.0.0.1", "port": port}}
    return specmod.load(None, [], base=data)


def status(run_dir: str | None) -> str:
    return view(run_dir)[0]


def view(run_dir: str | None) -> tuple[str, bool]:
    """The status line of the server started from the page, and whether it still runs."""
    if not run_dir:
        return "<div id='serve-status'>No server started from this page.</div>", False
    events = ev.read_all(run_dir)
    last = ev.final(events)
    start = next((e for e in events if e["event"] == "start"), None)
    stats = next((e for e in reversed(events) if e["event"] == "stats"), None)
    state = runs.status(run_dir, events)
    if last is not None:
        why = f": {last.get('message')}" if last["event"] == "error" else f" after {last.get('requests', 0)} request(s)"
        text = f"server {'failed' if last['event'] == 'error' else 'stopped'}{why}"
    elif state == "queued":
        text = "waiting for its devices (queued)"
    elif state != "running":
        text, start = "the server ended without a word; see its output.log", None
    elif start is not None:
        text = f"serving {', '.join(start['models'])} at <code>{start['url']}</code>"
        if stats:
            text += f" · {stats['requests']} request(s), {stats['tokens_per_second']} tokens/s"
    else:
        text = "loading the model ..."
    kind = "error" if last is not None and last["event"] == "error" else "info"
    return (f"<div id='serve-status' data-kind='{kind}'>{text if start else html.escape(text)} "
            f"<small>({html.escape(str(run_dir))})</small></div>"), state in ("running", "queued")


def build(ctx) -> None:
    import gradio as gr

    from studio.errors import is_user_error
    from studio.ui import jobs, watch

    with gr.Row(equal_height=True):
        port = gr.Number(value=8000, precision=0, label="port", elem_id="serve-port", scale=0, min_width=110)
        start = gr.Button("Start server", elem_id="serve-start", scale=0, min_width=130)
        stop = gr.Button("Stop server", elem_id="serve-stop", scale=0, min_width=130)
        shown = gr.HTML(status(None), elem_id="serve-status-box")
    followed = gr.State({"run": None})  # the server started from this page

    def on_start(model, adapter, p):
        try:
            spec = server_spec(ctx.workdir, ctx.runs_root, model, adapter, p)
            return {"run": str(jobs.start(spec, ctx.workdir, ctx.runs_root))}, gr.update()
        except Exception as e:
            msg = str(e) if is_user_error(e) else f"{type(e).__name__}: {e}"
            return {"run": None}, f"<div id='serve-status' data-kind='error'>{html.escape(msg)}</div>"

    def on_stop(st):
        if st.get("run"):
            jobs.stop(st["run"])
        return status(st.get("run"))

    def draw(st, session):
        now, running = view(st["run"])
        return {**st, "shown": now}, not running, (now if now != st.get("shown") else gr.skip(),)

    started = start.click(on_start, [ctx.top["model.name_or_path"], ctx.top["model.adapter"], port], [followed, shown])
    started.then(watch.watcher(draw), followed, [followed, shown], show_progress="hidden", concurrency_limit=None)
    stop.click(on_stop, followed, shown)
