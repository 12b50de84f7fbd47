"""The event stream of a job: `RUN_DIR/events.jsonl`, one JSON object per line, append-only, rank 0 only.

Every event has `event` (its kind) and `t` (unix time, seconds). The kinds:

    start       total_steps, num_examples, trainable_params, total_params, task
    log         step, epoch, loss, learning_rate, grad_norm, tokens_per_second, elapsed_s, eta_s
    eval        step, eval_loss
    checkpoint  step, path
    samples     step, items: [{prompt, completion, rewards: {function: value}, advantage}]   -- GRPO, after each log
    progress    done, total, rate, eta_s, (unit)          -- eval / export jobs
    message     text                                     -- a note for the user (warnings, phases)
    stats       requests, tokens, tokens_per_second, cancelled, failed, busy   -- serve jobs, every serve.stats_every s
    done        ...final metrics                         -- exactly one of these three ends a job
    error       message, traceback
    aborted     step

Readers must tolerate a last line that is still being written: `read()` skips any line that does not
parse and only returns complete lines.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

FINAL = ("done", "error", "aborted")
FILE = "events.jsonl"


def rank() -> int:
    """This process's rank under torchrun (0 without it)."""
    return int(os.environ.get("RANK", "0"))


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


class EventWriter:
    """Appends events to RUN_DIR/events.jsonl; a no-op on ranks other than 0."""

    def __init__(self, run_dir: str | Path, enabled: bool | None = None):
        self.path = Path(run_dir) / FILE
        if enabled is None:
            enabled = rank() == 0
        self.enabled = enabled
        self.finished = False

    def write(self, event: str, **fields) -> dict:
        record = {"event": event, "t": round(time.time(), 3), **fields}
        if not self.enabled or self.finished:
            return record
        if event in FINAL:
            self.finished = True
        line = json.dumps(record, default=_jsonable, ensure_ascii=False)
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(line + "\n")
            f.flush()
        return record


def _jsonable(x):
    try:
        return float(x)
    except (TypeError, ValueError):
        return str(x)


def read(run_dir: str | Path, offset: int = 0) -> tuple[list[dict], int]:
    """Events from byte `offset` on; returns (events, new_offset). A partial last line is left for next time."""
    path = Path(run_dir) / FILE
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            chunk = f.read()
    except FileNotFoundError:
        return [], offset
    events = []
    end = chunk.rfind(b"\n")
    if end < 0:
        return [], offset
    for raw in chunk[: end + 1].splitlines():
        try:
            obj = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError):
            continue
        if isinstance(obj, dict) and "event" in obj:
            events.append(obj)
    return events, offset + end + 1


def read_all(run_dir: str | Path) -> list[dict]:
    return read(run_dir)[0]


def final(events: list[dict]) -> dict | None:
    return next((e for e in reversed(events) if e.get("event") in FINAL), None)
