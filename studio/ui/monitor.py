"""Following a run from the page: read new events by offset, turn them into curves, a progress bar and a status.

The follow state is a plain dict kept in a gr.State (one per browser tab):

    state = follow("runs/x")            # {"run": "runs/x", "offset": 0, "events": [], "log": ""}
    state, new = advance(state)         # reads complete new lines of events.jsonl (a half-written line waits)
    curves(state["events"])             # DataFrame step, value, series (loss, eval_loss), drawn by chart.svg
"""
from __future__ import annotations

import html
import time
from pathlib import Path

import pandas as pd

from studio.run import events as ev
from studio.run import status as runs

LOG_TAIL = 12_000  # characters of output.log shown


def follow(run_dir: str | Path | None) -> dict:
    return {"run": str(run_dir) if run_dir else None, "offset": 0, "events": [], "status": None, "log_size": -1}


def advance(state: dict) -> tuple[dict, list[dict]]:
    """Read events written since the last call; returns (state, new events)."""
    if not state.get("run"):
        return state, []
    new, offset = ev.read(state["run"], state["offset"])
    if new:
        state = {**state, "offset": offset, "events": state["events"] + new}
    return state, new


def curves(events: list[dict], run: str | None = None) -> pd.DataFrame:
    """Loss and eval-loss points: columns step, value, series (series is `run: name` when `run` is given)."""
    rows = []
    for e in events:
        if e["event"] == "log" and e.get("loss") is not None:
            rows.append((e["step"], float(e["loss"]), "loss"))
        elif e["event"] == "eval" and e.get("eval_loss") is not None:
            rows.append((e["step"], float(e["eval_loss"]), "eval_loss"))
    df = pd.DataFrame(rows, columns=["step", "value", "series"]).astype({"step": "int64", "value": "float64", "series": "str"})
    if run is not None:
        df["series"] = run + ": " + df["series"]
    return df


def lr_curve(events: list[dict]) -> pd.DataFrame:
    rows = [(e["step"], float(e["learning_rate"])) for e in events if e["event"] == "log" and e.get("learning_rate") is not None]
    return pd.DataFrame(rows, columns=["step", "learning_rate"]).astype({"step": "int64", "learning_rate": "float64"})


def _dur(s) -> str:
    if s is None:
        return "?"
    s = int(s)
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"


def idle_html(text: str, label: str) -> str:
    """What a tab's progress bar says while it follows no run; `label` names it (a status, e.g. "training progress")."""
    return f"<div class='st-progress st-idle' role='status' aria-label='{label}'>{text}</div>"


def bar_html(run: str, status: str, pct: float, details: list[str], label: str, **data) -> str:
    """The progress bar of a followed run, the same on every tab: a status named `label`, `data` as attributes after
    data-status (data-step, data-total ...), the bar filled to `pct` percent, and a line: the run's name, its status,
    then `details`."""
    attrs = "".join(f" data-{k}='{v}'" for k, v in {"status": status, **data}.items())
    bits = [f"<b>{html.escape(Path(run).name)}</b>", f"<span class='st-status st-{status}'>{status}</span>", *details]
    return (f"<div class='st-progress' role='status' aria-label='{label}'{attrs}>"
            f"<div class='st-bar'><div class='st-fill st-{status}' style='width:{pct:.1f}%'></div></div>"
            f"<div class='st-line'>{' · '.join(bits)}</div></div>")


def progress_html(events: list[dict], status: str, run: str | None = None) -> str:
    """A progress bar with step/total, elapsed, ETA and tokens/s."""
    if not run:
        return idle_html("No run followed. Press Start, or pick a run below.", "training progress")
    start = next((e for e in events if e["event"] == "start"), None)
    logs = [e for e in events if e["event"] == "log"]
    last = logs[-1] if logs else {}
    total = (start or {}).get("total_steps") or last.get("total_steps") or 0
    step = last.get("step", 0)
    if status == "done":
        step = max(step, total)
    pct = 100 * step / total if total else 0
    t0 = (start or events[0])["t"] if events else None
    end = ev.final(events)
    elapsed = ((end["t"] if end else time.time()) - t0) if t0 else None
    bits = [f"step {step}/{total or '?'}", f"elapsed {_dur(elapsed)}"]
    if status == "running" and last.get("eta_s") is not None:
        bits.append(f"ETA {_dur(last['eta_s'])}")
    if last.get("tokens_per_second"):
        bits.append(f"{last['tokens_per_second']:.0f} tokens/s")
    if last.get("loss") is not None:
        bits.append(f"loss {last['loss']:.4f}")
    if status == "running" and not logs:
        msgs = [e["text"] for e in events if e["event"] == "message"]
        bits.append(html.escape(msgs[-1]) if msgs else "loading data and model ...")
    return bar_html(run, status, pct, bits, "training progress", step=step, total=total, points=len(logs))


def log_size(run_dir: str | Path | None) -> int:
    try:
        return (Path(run_dir) / "output.log").stat().st_size if run_dir else -1
    except OSError:
        return -1


def log_tail(run_dir: str | Path, chars: int = LOG_TAIL) -> str:
    path = Path(run_dir) / "output.log"
    try:
        with open(path, "rb") as f:
            f.seek(0, 2)
            size = f.tell()
            f.seek(max(0, size - chars))
            text = f.read().decode("utf-8", errors="replace")
    except OSError:
        return ""
    return text if size <= chars else "..." + text[text.find("\n") + 1:]


def final_message(events: list[dict], status: str, run_dir: str | Path) -> str:
    """Markdown for a finished run: metrics when done; the error and the end of the log when it failed."""
    end = ev.final(events)
    name = Path(run_dir).name
    if status == "done":
        loss = end.get("train_loss")
        extra = f", eval loss {end['eval_loss']:.4f}" if end.get("eval_loss") is not None else ""
        if end.get("best_step") is not None:
            extra += (f"; best {end.get('metric_for_best_model')} {end['best_metric']:.4f} at step {end['best_step']}, "
                      f"weights from step {end.get('weights_from_step')}")
        if end.get("early_stopped"):
            extra += "; early stopping ended it"
        return f"**{name}: done** in {end.get('step')} steps, train loss {loss:.4f}{extra}. Saved to `{end.get('path')}`." if loss is not None \
            else f"**{name}: done.**"
    if status == "aborted" and end.get("message"):
        return f"**{name}: aborted:** {end['message']}."
    if status == "aborted":
        return f"**{name}: aborted** at step {end.get('step', 0)}." + (f" Checkpoint: `{end['checkpoint']}`" if end.get("checkpoint") else "")
    if status in ("error", "crashed"):
        why = end.get("message") if end else "the process ended without a final event (killed, or out of memory?)"
        tail = "\n".join(log_tail(run_dir, 4000).splitlines()[-30:])
        return f"**{name}: failed.** {why}\n\nEnd of `output.log`:\n```\n{tail}\n```"
    return ""


def tick(state: dict) -> tuple[dict, bool, str]:
    """One read of the followed run: (state, changed, status). The status is re-derived only while the run is not finished."""
    if not state.get("run"):
        return state, False, ""
    state, new = advance(state)
    status = state.get("status")
    if status not in ev.FINAL:
        status = runs.status(state["run"], state["events"])
    changed = bool(new) or status != state.get("status")
    if status != state.get("status"):
        state = {**state, "status": status}
    return state, changed, status
