"""How a tab follows a run: one long event per follow that reads the run folder every EVERY seconds and sends the page
only what changed, until the run ends. An idle page sends nothing; a followed run costs the browser one update every
EVERY seconds at most. Each event costs the browser more than the updates it carries: a page that polled with a
1-second timer made a run started from it ~1.4x slower than from the CLI on a 2-core machine (docs/benchmarks.md,
"The watch").

    watch = watcher(draw)   # draw(st, session) -> (st, ended, updates), an update being gr.skip() where nothing changed
    start.click(on_start, ...).then(watch, state, [state, *drawn], show_progress="hidden", concurrency_limit=None)
    follow_job(started, state, [progress, result], redraw)   # the same for a tab that redraws only on a change
    st, changed, status, ended = read(st)                     # one read of the followed run, for a draw of its own
"""
from __future__ import annotations

import time

import gradio as gr

from studio.ui import jobs, monitor

EVERY = 3.0  # seconds between two reads of a followed run's folder
HEARTBEAT = 30.0  # a watch that found nothing new sends an empty update this often: a closed tab's watch then ends
FINISHED = ("done", "error", "aborted", "crashed")  # the statuses of a run that has ended, one way or another


def watcher(draw, every: float = EVERY, heartbeat: float = HEARTBEAT):
    """The event handler that follows the run in its state with `draw`; a newer watch of a browser session ends the
    session's older one (a new Start, Follow or page load)."""
    current: dict[str, object] = {}

    def watch(st, request: gr.Request):
        me, sent, session = object(), time.time(), request.session_hash
        current[session] = me
        try:
            while st.get("run") and current.get(session) is me:
                st, ended, updates = draw(st, session)
                if current.get(session) is not me:
                    break
                news = any(not (isinstance(u, dict) and u == gr.skip()) for u in updates)
                if ended or news or time.time() - sent >= heartbeat:
                    sent = time.time()
                    yield st, *updates
                if ended:
                    break
                time.sleep(every)
        finally:
            if current.get(session) is me:
                del current[session]

    return watch


def read(st: dict) -> tuple[dict, bool, str, bool]:
    """One read of the followed run (monitor.tick; finished children reaped first): (state, changed, status, ended),
    ended once it is neither running nor queued."""
    jobs.reap()
    st, changed, status = monitor.tick(st)
    return st, changed, status, status not in ("running", "queued")


def follow_job(event, state, outputs: list, redraw):
    """After `event`, follow the job in `state` (a monitor.follow dict), calling redraw(st, status, finished) for the
    updates of `outputs` only when its events or status changed. Returns the watch's event (to chain on its end)."""
    def draw(st, session):
        st, changed, status, ended = read(st)
        if not changed:
            return st, ended, (gr.skip(),) * len(outputs)
        return st, ended, redraw(st, status, status in FINISHED)

    return event.then(watcher(draw), state, [state, *outputs], show_progress="hidden", concurrency_limit=None)
