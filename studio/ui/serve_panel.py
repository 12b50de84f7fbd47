"""The Chat tab's API panel: start `studio serve` for the top bar's model and adapter as a job (run folder, events,
this machine only), show where it listens, stop it, and how to call it: the snippets name the host, port and model
names the running server serves (its `start` event), else the top bar's model and adapter on the port box's port.
The job outlives the page, like every job.
"""
from __future__ import annotations

import html
from pathlib import Path
from urllib.parse import urlsplit

from studio.run import events as ev
from studio.run import status as runs
from studio import spec as specmod
from studio.serve.snippets import served_name, snippets


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


def serving(run_dir: str | None) -> dict | None:
    """The `start` event (url, models, base) of the server in `run_dir` while it serves, else None."""
    if not run_dir:
        return None
    events = ev.read_all(run_dir)
    start = next((e for e in events if e["event"] == "start"), None)
    if start is None or ev.final(events) is not None or runs.status(run_dir, events) != "running":
        return None
    return start


def code(model: str | None, adapter: str | None, system: str, port, run_dir: str | None = None) -> str:
    """The snippets: for the server in `run_dir` while it serves (its host, port and model names: the top bar's
    adapter if it serves it, else the adapter it serves, else its base), else for the top bar's model and adapter on
    the port box's port."""
    model, adapter, system = model or None, adapter or None, system or ""
    start = serving(run_dir)
    if start is None:
        try:
            port = int(port)
        except (TypeError, ValueError):
            port = 8000
        return snippets(model, adapter, system, port=port)
    url = urlsplit(start["url"])
    names = list(start.get("models") or [])
    wanted = served_name(model, adapter)
    name = wanted if wanted in names else next((n for n in names if n != start.get("base")), names[0] if names else wanted)
    return snippets(model, adapter, system, port=url.port or 80, host=url.hostname or "127.0.0.1", name=name)


def view(run_dir: str | None) -> tuple[str, bool]:
    """The status line of the server started from the page, and whether it still runs."""
    if not run_dir:
        return "<div id='serve-status' role='status' aria-label='API server status'>No server started from this page.</div>", False
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
    return (f"<div id='serve-status' role='status' aria-label='API server status' data-kind='{kind}'>"
            f"{text if start else html.escape(text)} "
            f"<small>({html.escape(str(run_dir))})</small></div>"), state in ("running", "queued")


def build(ctx, system) -> None:
    """The panel, under the Chat tab's `system` prompt box (the snippets send it)."""
    import gradio as gr

    from studio.errors import is_user_error
    from studio.ui import jobs, watch

    with gr.Row(equal_height=True):
        port = gr.Number(value=8000, precision=0, label="port", elem_id="serve-port", scale=0, min_width=110)
        start = gr.Button("Start server", elem_id="serve-start", scale=0, min_width=130)
        stop = gr.Button("Stop server", elem_id="serve-stop", scale=0, min_width=130)
        shown = gr.HTML(status(None), elem_id="serve-status-box")
    api_code = gr.Markdown(snippets(None, None), elem_id="chat-api-code")
    followed = gr.State({"run": None})  # the server started from this page
    model, adapter = ctx.top["model.name_or_path"], ctx.top["model.adapter"]

    def on_start(m, a, sp, p):
        try:
            spec = server_spec(ctx.workdir, ctx.runs_root, m, a, p)
            # the watch names what is served with the choices of this moment (the top bar's, the system prompt)
            return {"run": str(jobs.start(spec, ctx.workdir, ctx.runs_root)), "asked": [m, a, sp, p]}, gr.update()
        except Exception as e:
            msg = str(e) if is_user_error(e) else f"{type(e).__name__}: {e}"
            return {"run": None}, (f"<div id='serve-status' role='status' aria-label='API server status' data-kind='error'>"
                                   f"{html.escape(msg)}</div>")

    def on_stop(st):
        if st.get("run"):
            jobs.stop(st["run"])
        return status(st.get("run"))

    code_inputs = [model, adapter, system, port, followed]

    def draw(st, session):
        jobs.reap()
        now, running = view(st["run"])
        lines = code(*st["asked"], st["run"])
        updates = (now if now != st.get("shown") else gr.skip(), lines if lines != st.get("code") else gr.skip())
        return {**st, "shown": now, "code": lines}, not running, updates

    started = start.click(on_start, [model, adapter, system, port], [followed, shown])
    started.then(watch.watcher(draw), followed, [followed, shown, api_code], show_progress="hidden", concurrency_limit=None)
    stop.click(on_stop, followed, shown)  # the watch sends the lines once the server has stopped
    for comp in (model, adapter, system, port):  # the lines follow the chosen model, adapter, system prompt and port
        comp.change(lambda m, a, sp, p, st: code(m, a, sp, p, st.get("run")), code_inputs, api_code, show_progress="hidden")
