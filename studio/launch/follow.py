"""Following a job from the terminal: start it, print its events until the final one, and make sure there is one.

    rc = run_job(spec)                 # preflight, start (or queue and wait its turn), follow; 0 done, 1 error, 130 aborted
    finish(run_dir, proc.returncode)   # the child is gone: make sure the events end with done/error/aborted
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from studio.launch import command, preflight, process, queue
from studio.run import events as ev
from studio.run import job
from studio.run import status as runs


def run_job(spec, dry_run: bool = False, detach: bool = False, studio_line: str | None = None) -> int:
    """Start a job (train, eval, export) as a child process and follow it to its end."""
    preflight.preflight(spec)
    if dry_run:
        print(command.describe(spec, studio_line=studio_line))
        return 0
    run_dir = Path(spec.output_dir)
    offset = (run_dir / ev.FILE).stat().st_size if (run_dir / ev.FILE).exists() else 0
    if spec.launch.nnodes > 1 and spec.launch.node_rank > 0:
        proc, note = command.start(spec), ""  # joins node 0's job: never queued
    else:
        proc, note = queue.submit(spec)
    print(f"run folder: {run_dir}   (log: {run_dir / 'output.log'})", flush=True)
    if proc is None:
        print(note, flush=True)
        if detach:
            print(f"waiting in the queue in the background; see: studio queue --root {runs.root_of(run_dir)}")
            return 0
        proc = _wait_turn(run_dir)
        if proc is None:
            last = ev.final(ev.read(run_dir, offset)[0])
            print(format_event(last) if last else "the job left the queue without starting", flush=True)
            return 130
    elif detach:
        print(f"started in the background (pid {proc.pid}); follow with: studio runs")
        return 0
    if spec.launch.node_rank > 0:  # node 0 writes the events; this node only runs its ranks
        print(f"node {spec.launch.node_rank} of {spec.launch.nnodes}: running its ranks (log: {run_dir}/output-node{spec.launch.node_rank}.log); "
              "node 0 shows the progress", flush=True)
        return _wait_node(run_dir, proc, offset)

    def forward(signum, frame):
        print("\nstopping: the job saves what it has and ends (Ctrl-C again to kill it) ...", file=sys.stderr, flush=True)
        process.stop(run_dir, wait=False)
        signal.signal(signal.SIGINT, lambda s, f: process.stop(run_dir, grace=0))

    signal.signal(signal.SIGINT, forward)
    signal.signal(signal.SIGTERM, forward)
    last = _follow_from(run_dir, proc, offset)
    if last is None:
        print(f"error: the job ended without a final event; see {run_dir / 'output.log'}", file=sys.stderr)
        return 1
    if last["event"] == "error":
        print(f"job failed: {last.get('message')}\n(full log: {run_dir / 'output.log'})", file=sys.stderr)
        return 1
    return 0 if last["event"] == "done" else 130


def resume_spec(run_dir: str | Path, overrides: list[str] | None = None):
    """The spec that continues a crashed or aborted run: its own spec.yaml, from its last checkpoint."""
    from studio import spec as specmod

    run_dir = Path(run_dir)
    if not (run_dir / "spec.yaml").is_file():
        raise specmod.SpecError(f"--resume {run_dir}: not a run folder (no spec.yaml); studio runs lists the runs")
    if not runs.resumable(run_dir):
        why = "it has no checkpoint yet" if runs.last_checkpoint(run_dir) is None else f"it is {runs.status(run_dir)}"
        raise specmod.SpecError(f"--resume {run_dir}: only a crashed or aborted training run with a checkpoint can be resumed; {why}")
    return specmod.load(run_dir / "spec.yaml", [*(overrides or []), "train.resume_from_checkpoint=auto", f"output_dir={run_dir}"])


class _Started:
    """A job the queue's waiter started: followed by its process group, like a Popen."""

    def __init__(self, run_dir: Path):
        self.run_dir, self.pid, self.returncode = run_dir, (runs.job_info(run_dir) or {}).get("pid"), None

    def poll(self):
        return None if runs.is_running(self.run_dir) else -1

    def wait(self, timeout=None):
        deadline = time.time() + (timeout or 1e9)
        while self.poll() is None and time.time() < deadline:
            time.sleep(0.2)


def _wait_turn(run_dir: Path):
    """Wait while the job is queued (Ctrl-C takes it out of the queue); its process once started, None if it left."""
    try:
        while runs.status(run_dir) == "queued":
            time.sleep(0.5)
    except KeyboardInterrupt:
        queue.cancel(run_dir, runs.root_of(run_dir))
        return None
    return _Started(run_dir) if runs.job_info(run_dir) and runs.status(run_dir) not in ("aborted", "new") else None


NODE_GRACE = 60.0  # s a node's ranks may outlive node 0's final event before this node stops them


def _wait_node(run_dir, proc, offset, grace: float = NODE_GRACE) -> int:
    """Node 1, 2 ...: wait for this node's ranks. On a shared folder node 0's final event is seen here too: ranks still
    alive `grace` s after it wait on peers that are gone (torchrun would hold them up to its 15-minute rendezvous
    timeout), so they are stopped and the node says why."""
    ended = None
    while proc.poll() is None:
        time.sleep(1.0)
        if ended is None:
            events, offset = ev.read(run_dir, offset)
            last = ev.final(events)
            ended = (time.time(), last) if last else None
        elif time.time() - ended[0] > grace:
            print(f"node 0 ended ({ended[1]['event']}{': ' + ended[1]['message'] if ended[1].get('message') else ''}); "
                  "stopping this node's ranks", file=sys.stderr, flush=True)
            job = {"pid": proc.pid, "pgid": proc.pid}
            pids = process.job_pids(job)
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                pass
            for p in pids | process.job_pids(job):
                process.kill_tree(p)
            proc.wait()
            return 1
    return proc.returncode


def _follow_from(run_dir, proc, offset):
    while True:
        events, offset = ev.read(run_dir, offset)
        for e in events:
            print(format_event(e), flush=True)
            if e["event"] in ev.FINAL:
                try:
                    proc.wait(timeout=120)
                except Exception:
                    pass
                return e
        if proc.poll() is not None:
            time.sleep(0.3)
            events, offset = ev.read(run_dir, offset)
            for e in events:
                print(format_event(e), flush=True)
            last = ev.final(events) or finish(run_dir, proc.returncode, offset)
            if last and last not in events:
                print(format_event(last), flush=True)
            return last
        time.sleep(0.5)


def finish(run_dir: str | Path, returncode: int | None = None, offset: int = 0) -> dict | None:
    """Once the child has exited: its final event; if it died without one, write an `error` event saying why.

    The reason is the first error a rank left behind (ranks other than 0 cannot write events), else the exit
    code and the end of output.log. `offset`: where this job's events start in events.jsonl (a resumed run
    appends to the events of the earlier one).
    """
    events, _ = ev.read(run_dir, offset)
    last = ev.final(events)
    if last:
        return last
    errors = job.rank_errors(run_dir)
    if errors:
        e = errors[0]
        message = f"rank {e.get('rank')}: {e.get('message')}"
        return ev.EventWriter(run_dir, enabled=True).write("error", message=message, traceback=e.get("traceback", ""), rank=e.get("rank"))
    code = f"exit code {returncode}" if returncode is not None and returncode >= 0 else (
        f"killed by signal {-returncode}" if returncode is not None else "no exit code")
    tail = _log_tail(run_dir)
    return ev.EventWriter(run_dir, enabled=True).write(
        "error", message=f"the job ended without a final event ({code}); the end of output.log:\n{tail}", traceback="")


def _log_tail(run_dir: str | Path, lines: int = 8) -> str:
    try:
        text = (Path(run_dir) / "output.log").read_text(errors="replace")
    except OSError:
        return "(no output.log)"
    return "\n".join([line for line in text.splitlines() if line.strip()][-lines:])[-2000:]


def format_event(e: dict) -> str:
    kind = e["event"]
    if kind == "log":
        parts = [f"step {e.get('step')}/{e.get('total_steps', '?')}"]
        for key, fmt in (("loss", "loss {:.4f}"), ("learning_rate", "lr {:.2e}"), ("tokens_per_second", "{:.0f} tok/s"), ("eta_s", "eta {:.0f}s")):
            if e.get(key) is not None:
                parts.append(fmt.format(e[key]))
        return "  ".join(parts)
    if kind == "eval":
        return f"step {e.get('step')}  eval_loss {e.get('eval_loss', float('nan')):.4f}"
    if kind == "progress":
        return f"{e.get('done')}/{e.get('total')} {e.get('unit', '')}".strip()
    if kind == "message":
        return e.get("text", "")
    if kind == "samples":  # GRPO: the latest completions and their rewards
        shown = [f"{json.dumps(it.get('completion', '')[:60], ensure_ascii=False)} -> "
                 + ", ".join(f"{k} {v}" for k, v in (it.get("rewards") or {}).items()) for it in (e.get("items") or [])[:2]]
        return f"step {e.get('step')} samples: " + "; ".join(shown)
    if kind == "error":
        return f"error: {e.get('message')}"
    rest = {k: v for k, v in e.items() if k not in ("event", "t", "traceback")}
    return f"{kind}: {json.dumps(rest, ensure_ascii=False)}" if rest else kind
