"""The web UI's server (`studio webui`, studio/cli/webui.py): serves the page from the current (working) folder.

    studio webui [--host 127.0.0.1] [--port 7860] [--auth USER:PASS] [--allow-open]

Runs, uploads and dataset files stay inside the working folder. Jobs are detached child processes:
stopping this server (or closing the page) does not stop them, and the page reattaches when it loads.
The server's helpers (the data preview child, the GPU probe) share its process group; SIGTERM stops them.
"""
from __future__ import annotations

import os
import signal
from pathlib import Path

from studio.serve import is_loopback
from studio.spec import SpecError


def check_access(host: str, auth: str | None, allow_open: bool) -> tuple[str, str] | None:
    """The (user, password) to require, or None; refuses an open server on a non-loopback address."""
    if auth:
        user, sep, password = auth.partition(":")
        if not sep or not user or not password:
            raise SpecError("--auth: expected USER:PASS, e.g. --auth admin:s3cret")
        return user, password
    if not is_loopback(host) and not allow_open:
        raise SpecError(f"--host {host} makes the studio reachable from other machines, and anyone who reaches it can run "
                        "code here. Add --auth USER:PASS, or pass --allow-open if this network is trusted.")
    return None


def stop_helpers(grace: float = 5.0) -> list[int]:
    """Stop this server's helper children (those in its own process group, with their children), never a job
    (each job leads a process group of its own). Returns the pids it stopped."""
    import psutil

    group = os.getpgid(0)
    helpers = []
    for child in psutil.Process().children():
        try:
            if os.getpgid(child.pid) == group:
                helpers += [child] + child.children(recursive=True)
        except (ProcessLookupError, psutil.NoSuchProcess):
            continue
    for p in helpers:
        try:
            p.terminate()
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(helpers, timeout=grace)
    for p in alive:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    return [p.pid for p in helpers]


def _on_sigterm(signum, frame) -> None:
    stop_helpers()
    raise KeyboardInterrupt  # gradio's launch loop closes the server on it


def install_stop_handler() -> None:
    signal.signal(signal.SIGTERM, _on_sigterm)


def quiet_queue(demo) -> None:
    """gradio 6's queue polls for work every 1 ms (10 ms for progress) on Linux: about 4% of a core on an idle server.
    Polling every 50 ms and 200 ms costs an event at most 50 ms before it starts (docs/benchmarks.md: the idle page)."""
    queue = getattr(demo, "_queue", None)
    if queue is not None and hasattr(queue, "sleep_when_free"):
        queue.sleep_when_free = max(queue.sleep_when_free, 0.05)
        queue.progress_update_sleep_when_free = max(getattr(queue, "progress_update_sleep_when_free", 0.2), 0.2)


def serve(host: str = "127.0.0.1", port: int = 7860, auth: str | None = None, allow_open: bool = False) -> None:
    credentials = check_access(host, auth, allow_open)
    workdir = Path.cwd()
    # gradio keeps uploads in its temp folder: keep that inside the working folder too
    os.environ.setdefault("GRADIO_TEMP_DIR", str(workdir / ".studio" / "uploads"))
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    from studio.ui import app

    install_stop_handler()
    demo = app.build_app(workdir)
    print(f"studio web UI: http://{'127.0.0.1' if host in ('0.0.0.0', '::') else host}:{port}  (working folder {workdir})", flush=True)
    demo.queue(default_concurrency_limit=4)
    quiet_queue(demo)
    demo.launch(
        server_name=host, server_port=port, auth=credentials, show_error=True, quiet=True,
        allowed_paths=[str(workdir)], **app.launch_kwargs(),
        _frontend=False,  # skips gradio's 3-second HEAD self-check, which fails a busy machine's server at start
    )
    stop_helpers()
