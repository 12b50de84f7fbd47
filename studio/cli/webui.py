"""`studio webui`: serve the web UI from the current (working) folder (studio/ui/webui.py)."""
from __future__ import annotations

import os


def cmd_webui(args) -> int:
    from studio.ui.webui import serve, stop_helpers

    try:
        serve(args.host, args.port, args.auth, args.allow_open)
    except KeyboardInterrupt:  # stopped before the server was up
        stop_helpers()
    return 0


def add_cli(sub) -> None:
    w = sub.add_parser("webui", help="start the web UI (train, evaluate, chat, export in the browser)")
    w.add_argument("--host", default="127.0.0.1", help="address to listen on (127.0.0.1: this machine only)")
    w.add_argument("--port", type=int, default=int(os.environ.get("STUDIO_PORT", 7860)))
    w.add_argument("--auth", default=None, metavar="USER:PASS", help="require this login")
    w.add_argument("--allow-open", action="store_true", help="allow a non-loopback --host without --auth")
    w.set_defaults(fn=cmd_webui)
