"""Start, stop and follow jobs. A job is a child process in its own process group that reads RUN_DIR/spec.yaml.

    argv = command(spec, run_dir)      # pure: what will run (shown by --dry-run and the UI's Preview)
    proc = start(spec)                 # writes spec.yaml and job.json, starts the child detached
    stop(run_dir)                      # SIGTERM to the group; SIGKILL after a grace period
"""
from __future__ import annotations

import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from studio import events as ev
from studio import runs
from studio import spec as specmod
from studio.spec import JobSpec

ENTRY = {"train": "studio.train", "eval": "studio.evaluate", "export": "studio.export"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def command(spec: JobSpec, run_dir: str | Path | None = None) -> list[str]:
    """The argv that runs `spec` (one process, or torchrun for several)."""
    run_dir = str(run_dir or spec.output_dir)
    la = spec.launch
    module = ENTRY[spec.task]
    if spec.task != "train" or (la.nproc_per_node == 1 and la.nnodes == 1):
        return [sys.executable, "-m", module, run_dir]
    argv = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={la.nproc_per_node}"]
    if la.nnodes > 1:
        argv += [f"--nnodes={la.nnodes}", f"--node_rank={la.node_rank}"]
    argv += [f"--master_addr={la.master_addr}", f"--master_port={la.master_port or 29500}"]
    return argv + ["-m", module, run_dir]


def child_env(spec: JobSpec) -> dict:
    env = dict(os.environ)
    env["PYTHONUNBUFFERED"] = "1"
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    dev = spec.launch.devices
    if dev:
        env["CUDA_VISIBLE_DEVICES"] = "" if dev == "cpu" else dev
    return env


def shell_line(spec: JobSpec, run_dir: str | Path | None = None) -> str:
    dev = spec.launch.devices
    prefix = f"CUDA_VISIBLE_DEVICES={'' if dev == 'cpu' else dev} " if dev else ""
    return prefix + shlex.join(command(spec, run_dir))


def prepare(spec: JobSpec) -> Path:
    """Resolve what must be fixed before launch (a free master port) and write RUN_DIR/spec.yaml."""
    run_dir = Path(spec.output_dir)
    if spec.task == "train" and (spec.launch.nproc_per_node > 1 or spec.launch.nnodes > 1) and not spec.launch.master_port:
        spec.launch.master_port = free_port()
    run_dir.mkdir(parents=True, exist_ok=True)
    specmod.dump(spec, run_dir / "spec.yaml")
    return run_dir


def start(spec: JobSpec) -> subprocess.Popen:
    """Write the spec into the run folder and start the child, detached, its output into output.log."""
    run_dir = prepare(spec)
    if runs.is_running(run_dir):
        raise specmod.SpecError(f"output_dir: {run_dir} has a job running; choose another output folder or stop it first")
    (run_dir / runs.QUEUED).unlink(missing_ok=True)
    argv = command(spec, run_dir)
    log = open(run_dir / "output.log", "ab")
    log.write(f"$ {shell_line(spec, run_dir)}\n".encode())
    log.flush()
    proc = subprocess.Popen(
        argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        start_new_session=True, env=child_env(spec),
    )
    log.close()
    job = {"pid": proc.pid, "pgid": proc.pid, "argv": argv, "started": time.time(), "host": socket.gethostname()}
    (run_dir / runs.JOB).write_text(json.dumps(job))
    return proc


def stop(run_dir: str | Path, grace: float = 30.0, wait: bool = True) -> bool:
    """Ask the job to stop (SIGTERM: it saves and writes `aborted`); kill the whole group after `grace` s."""
    info = runs.job_info(run_dir)
    if not info or not runs.group_alive(info["pgid"]):
        return False
    pgid = info["pgid"]
    _signal_group(pgid, signal.SIGTERM)
    if not wait:
        return True
    deadline = time.time() + grace
    while time.time() < deadline:
        if not runs.group_alive(pgid):
            break
        time.sleep(0.2)
    if runs.group_alive(pgid):
        _signal_group(pgid, signal.SIGKILL)
        time.sleep(0.5)
    if not ev.final(ev.read_all(run_dir)):
        last = [e for e in ev.read_all(run_dir) if e["event"] == "log"]
        ev.EventWriter(run_dir, enabled=True).write("aborted", step=last[-1]["step"] if last else 0, killed=True)
    return True


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        pass


def follow(run_dir: str | Path, proc: subprocess.Popen | None = None, out=sys.stdout, poll: float = 0.5) -> dict | None:
    """Print the job's events as they come until its final event (or the child's exit); return the final event."""
    offset = 0
    last = None
    while True:
        events, offset = ev.read(run_dir, offset)
        for e in events:
            print(format_event(e), file=out, flush=True)
            if e["event"] in ev.FINAL:
                last = e
        if last:
            if proc is not None:
                try:
                    proc.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    pass
            return last
        if proc is not None and proc.poll() is not None:
            time.sleep(poll)
            events, offset = ev.read(run_dir, offset)
            for e in events:
                print(format_event(e), file=out, flush=True)
            return ev.final(events)
        if proc is None and not runs.is_running(run_dir):
            return ev.final(ev.read_all(run_dir))
        time.sleep(poll)


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
    if kind == "error":
        return f"error: {e.get('message')}"
    rest = {k: v for k, v in e.items() if k not in ("event", "t", "traceback")}
    return f"{kind}: {json.dumps(rest, ensure_ascii=False)}" if rest else kind
