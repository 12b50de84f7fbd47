"""The serve job: `python -m studio.serve.job RUN_DIR` (what `studio serve` and the page start as a child process).

Reads RUN_DIR/spec.yaml (task serve), loads the base model and the adapters of `serve.adapters` once, and serves
the OpenAI API until SIGTERM or SIGINT. Events: `start` once the server listens (url, models), `stats` every
`serve.stats_every` seconds while requests come (requests served, tokens, tokens/s, errors), then `done` with the
totals (or `error`, saying why). The API key comes from the environment variable STUDIO_API_KEY, never from the
spec, so that it is not written into the run folder or its log.
"""
from __future__ import annotations

import os
import signal
import socket
import threading
import time
from pathlib import Path

from studio.run import events as ev
from studio.run import job
from studio import spec as specmod

KEY_ENV = "STUDIO_API_KEY"


def parse_adapters(items: list) -> dict[str, str]:
    """["pico=runs/identity_lora", ...] -> {"pico": "runs/identity_lora"}; refuses a malformed or repeated NAME."""
    import re

    out: dict[str, str] = {}
    for item in items or []:
        name, sep, path = str(item).partition("=")
        name, path = name.strip(), path.strip()
        if not sep or not name or not path:
            raise specmod.SpecError(f"serve.adapters: `{item}` is not NAME=PATH, e.g. pico=runs/identity_lora")
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._:/-]*", name):
            raise specmod.SpecError(f"serve.adapters: the name `{name}` may hold letters, digits and . _ - : / only")
        if name in out:
            raise specmod.SpecError(f"serve.adapters: the name `{name}` is given twice")
        out[name] = path
    return out


def check_bind(host: str, port: int, api_key: str | None) -> None:
    """Refuse an open server and a port that is taken, before any model loads."""
    from studio.serve import is_loopback

    if not is_loopback(host) and not api_key:
        raise specmod.SpecError(f"--host {host} makes the API reachable from other machines: start it with --api-key KEY "
                                f"(or set {KEY_ENV}), so that only clients with the key are served")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as e:
            raise specmod.SpecError(f"serve.port: cannot listen on {host}:{port} ({e.strerror}); choose another with --port") from None


def run(spec, run_dir: Path, writer: ev.EventWriter, api_key: str | None) -> dict:
    import uvicorn

    from studio.serve.app import build_app
    from studio.serve.engine import Engine

    s = spec.serve
    check_bind(s.host, s.port, api_key)
    say = lambda text: print(text, flush=True)  # noqa: E731
    if s.num_threads:
        import torch

        torch.set_num_threads(s.num_threads)
    writer.write("message", text=f"loading `{spec.model.name_or_path}` with {len(s.adapters)} adapter(s) ...")
    engine = Engine.load(spec.model.name_or_path, parse_adapters(s.adapters), None if spec.model.template == "auto" else spec.model.template,
                         spec.model.quantization_bit, s.max_batch_size, say).start()
    app = build_app(engine, api_key, s.max_tokens, say)
    server = uvicorn.Server(uvicorn.Config(app, host=s.host, port=s.port, log_level="warning", access_log=False,
                                           timeout_graceful_shutdown=5))
    shown = "127.0.0.1" if s.host in ("0.0.0.0", "::") else s.host
    url = f"http://{shown}:{s.port}/v1"
    t0 = time.time()

    def report():
        while not server.started and not server.should_exit:
            time.sleep(0.1)
        if server.started:
            writer.write("start", task="serve", url=url, models=engine.names, base=engine.base_name, auth=bool(api_key))
            say(f"serving {', '.join(engine.names)} at {url}  (Ctrl-C stops)")
        last = (0, 0, time.time())
        while not server.should_exit:
            time.sleep(min(s.stats_every, 1.0))
            st, now = engine.stats, time.time()
            if now - last[2] >= s.stats_every and (st.requests, st.tokens) != last[:2]:
                rate = (st.tokens - last[1]) / (now - last[2])
                writer.write("stats", requests=st.requests, tokens=st.tokens, tokens_per_second=round(rate, 2),
                             cancelled=st.cancelled, failed=st.failed, busy=engine.busy_rows())
                last = (st.requests, st.tokens, now)

    threading.Thread(target=report, daemon=True).start()
    # uvicorn catches SIGINT and SIGTERM while it runs and raises them again once it has stopped: let them pass
    signal.signal(signal.SIGTERM, lambda *a: None)
    signal.signal(signal.SIGINT, lambda *a: None)
    try:
        server.run()
    finally:
        engine.close()
    if not server.started:
        raise specmod.SpecError(f"serve: the server could not start on {s.host}:{s.port}; see output.log")
    st = engine.stats
    return {"requests": st.requests, "tokens": st.tokens, "cancelled": st.cancelled, "failed": st.failed,
            "uptime_s": round(time.time() - t0, 1)}


def body(spec, run_dir: Path, writer: ev.EventWriter):
    return "done", run(spec, run_dir, writer, os.environ.pop(KEY_ENV, None) or None)


def main(argv: list[str] | None = None) -> int:
    return job.main(body, __doc__, argv)  # SIGTERM / SIGINT while the models load: `aborted`


if __name__ == "__main__":
    raise SystemExit(main())
