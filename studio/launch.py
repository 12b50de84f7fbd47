"""Start, stop and follow jobs. A job is a child process in its own process group that reads RUN_DIR/spec.yaml.

    argv = command(spec, run_dir)      # pure: what will run (one process, or torchrun for several / DeepSpeed)
    text = describe(spec)              # the same as shell lines, one per node (--dry-run, the UI's Preview)
    proc = start(spec)                 # writes spec.yaml and job.json, starts the child detached
    stop(run_dir)                      # SIGTERM once; SIGKILL to every process of the job after a grace period
    finish(run_dir, proc.returncode)   # the child is gone: make sure the events end with done/error/aborted

Only rank 0 writes events. A rank that fails leaves RUN_DIR/error-rank{N}.json, and the job's `error` event
names the first rank that failed, with its message.
"""
from __future__ import annotations

import json
import os
import random
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

ENTRY = {"train": "studio.train", "eval": "studio.evaluate", "export": "studio.export", "serve": "studio.serve.job"}
DEFAULT_PORT = 29500  # torchrun's own default; every node of a multi-node job must use the same port
ERROR_FILE = "error-rank{rank}.json"  # what a failing rank leaves behind (only rank 0 writes events)


def free_port() -> int:
    """A free TCP port below the kernel's ephemeral range (32768 and up), so that no outgoing connection takes it
    between now and the moment a server binds it."""
    for port in random.sample(range(20000, 32000), 200):
        with socket.socket() as s:
            try:
                s.bind(("", port))
            except OSError:
                continue
            return port
    raise OSError("no free port in 20000-32000")


def distributed(spec: JobSpec) -> bool:
    """Several processes, several nodes, or DeepSpeed (which always runs under torchrun, even on one process)."""
    la = spec.launch
    return spec.task == "train" and (la.nproc_per_node > 1 or la.nnodes > 1 or bool(la.deepspeed))


def command(spec: JobSpec, run_dir: str | Path | None = None) -> list[str]:
    """The argv that runs `spec`: `python -m studio.<task> RUN_DIR`, or torchrun around it.

    One node without a master_port uses torchrun's --standalone rendezvous, which takes a free port itself.
    """
    run_dir = str(run_dir or spec.output_dir)
    la = spec.launch
    module = ENTRY[spec.task]
    if not distributed(spec):
        return [sys.executable, "-m", module, run_dir]
    argv = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={la.nproc_per_node}"]
    if la.nnodes > 1:
        argv += [f"--nnodes={la.nnodes}", f"--node_rank={la.node_rank}",
                 f"--master_addr={la.master_addr}", f"--master_port={la.master_port or DEFAULT_PORT}"]
    elif la.master_port:
        argv += [f"--master_addr={la.master_addr}", f"--master_port={la.master_port}"]
    else:
        argv += ["--standalone"]
    return argv + ["-m", module, run_dir]


def device_env(spec: JobSpec) -> dict:
    """The environment the devices choice sets for the child (GPU numbers as nvidia-smi shows them)."""
    dev = spec.launch.devices
    if not dev:
        return {}
    if dev == "cpu":
        return {"CUDA_VISIBLE_DEVICES": ""}
    return {"CUDA_DEVICE_ORDER": "PCI_BUS_ID", "CUDA_VISIBLE_DEVICES": dev}


def child_env(spec: JobSpec) -> dict:
    env = dict(os.environ)
    env["PYTHONUNBUFFERED"] = "1"
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    env.update(device_env(spec))
    return env


EMPTY = '""'  # how an empty variable shows in a shell line


def shell_line(spec: JobSpec, run_dir: str | Path | None = None) -> str:
    prefix = "".join(f"{k}={shlex.quote(v) if v else EMPTY} " for k, v in device_env(spec).items())
    return prefix + shlex.join(command(spec, run_dir))


def describe(spec: JobSpec, run_dir: str | Path | None = None, studio_line: str | None = None) -> str:
    """What will run, as shell lines: the one command, or for several nodes the command for each node.

    `studio_line` (the `studio train SPEC ...` the user typed) adds, per node, the studio command that starts it.
    """
    la = spec.launch
    if la.nnodes == 1:
        return shell_line(spec, run_dir)
    run_dir = run_dir or spec.output_dir
    port = la.master_port or DEFAULT_PORT
    lines = [f"# {la.nnodes} nodes x {la.nproc_per_node} processes; node 0 ({la.master_addr}:{port}) must be reachable from every node.",
             f"# Each node needs the data, the model and {run_dir}/spec.yaml (a shared folder, or run `studio train` there as below);",
             "# only node 0 writes events and saves."]
    keep = la.node_rank
    try:
        for rank in range(la.nnodes):
            la.node_rank = rank
            lines.append(f"# node {rank}{' (this one)' if rank == keep else ''}:")
            if studio_line:
                lines.append(f"{studio_line} launch.node_rank={rank} launch.master_addr={la.master_addr} launch.master_port={port}")
                lines.append(f"#   which runs: {shell_line(spec, run_dir)}")
            else:
                lines.append(shell_line(spec, run_dir))
    finally:
        la.node_rank = keep
    return "\n".join(lines)


def check(spec: JobSpec) -> None:
    """Launch settings that would only fail inside the child: a DeepSpeed JSON file that is missing or broken."""
    if spec.task == "train" and spec.launch.deepspeed:
        from studio.deepspeed import config_for

        config_for(spec.launch.deepspeed)


def prepare(spec: JobSpec) -> Path:
    """Check what can be checked before launch and write RUN_DIR/spec.yaml."""
    check(spec)
    run_dir = Path(spec.output_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    specmod.dump(spec, run_dir / "spec.yaml")
    for old in run_dir.glob(ERROR_FILE.format(rank="*")):
        old.unlink(missing_ok=True)  # left by an earlier attempt in this folder
    return run_dir


def start(spec: JobSpec) -> subprocess.Popen:
    """Write the spec into the run folder and start the child, detached, its output into output.log.

    Node 1, 2 ... of a multi-node job keep their own output-node{N}.log and job-node{N}.json, so that on a
    shared folder they do not hide node 0's job (which writes the events and owns the run's status).
    """
    node = spec.launch.node_rank if spec.launch.nnodes > 1 else 0
    if node == 0 and runs.is_running(spec.output_dir):
        raise specmod.SpecError(f"output_dir: {spec.output_dir} has a job running; choose another output folder or stop it first")
    run_dir = prepare(spec)
    (run_dir / runs.QUEUED).unlink(missing_ok=True)
    argv = command(spec, run_dir)
    log = open(run_dir / ("output.log" if node == 0 else f"output-node{node}.log"), "ab")
    log.write(f"$ {shell_line(spec, run_dir)}\n".encode())
    log.flush()
    proc = subprocess.Popen(
        argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        start_new_session=True, env=child_env(spec),
    )
    log.close()
    job = {"pid": proc.pid, "pgid": proc.pid, "argv": argv, "started": time.time(), "host": socket.gethostname()}
    (run_dir / (runs.JOB if node == 0 else f"job-node{node}.json")).write_text(json.dumps(job))
    return proc


def stop(run_dir: str | Path, grace: float = 30.0, wait: bool = True) -> bool:
    """Ask the job to stop (SIGTERM: it saves and writes `aborted`); kill every process of it after `grace` s.

    torchrun starts each rank in a session of its own, so the job is the child's process group plus every
    descendant of the child (collected while torchrun lives: a rank outlives a killed torchrun otherwise).
    """
    info = runs.job_info(run_dir)
    if not info or not runs.group_alive(info["pgid"]):
        return False
    pgid = info["pgid"]
    pids = job_pids(info)
    if not info.get("stopping"):  # once: a second SIGTERM makes torchrun drop its own graceful shutdown
        _signal_group(pgid, signal.SIGTERM)
        (Path(run_dir) / runs.JOB).write_text(json.dumps({**info, "stopping": time.time()}))
    if not wait:
        return True
    deadline = time.time() + grace
    while time.time() < deadline:
        pids |= job_pids(info)
        if not any(runs.pid_alive(p) for p in pids):
            break
        time.sleep(0.2)
    pids |= job_pids(info)
    if any(runs.pid_alive(p) for p in pids):
        _signal_group(pgid, signal.SIGKILL)
        for p in pids:
            kill_tree(p)
        time.sleep(0.5)
    if not ev.final(ev.read_all(run_dir)):
        last = [e for e in ev.read_all(run_dir) if e["event"] == "log"]
        ev.EventWriter(run_dir, enabled=True).write("aborted", step=last[-1]["step"] if last else 0, killed=True)
    return True


def _parents() -> dict[int, tuple[int, int]]:
    """pid -> (parent pid, process group) of every live process, from /proc."""
    out = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[0] != "Z":
            out[int(stat.parent.name)] = (int(fields[1]), int(fields[2]))
    return out


def job_pids(info: dict) -> set[int]:
    """The live processes of a job: its process group and all descendants of its first process."""
    table = _parents()
    found = {pid for pid, (_, group) in table.items() if group == info["pgid"]}
    frontier = set(found) | {info["pid"]}
    while frontier:
        children = {pid for pid, (ppid, _) in table.items() if ppid in frontier and pid not in found}
        found |= children
        frontier = children
    return {p for p in found if p in table}


def kill_tree(pid: int) -> None:
    """SIGKILL a process and its group (a rank's group holds its own workers)."""
    try:
        group = os.getpgid(pid)
    except ProcessLookupError:
        return
    if group != os.getpgid(0):
        _signal_group(group, signal.SIGKILL)
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def rank_errors(run_dir: str | Path) -> list[dict]:
    """The errors that ranks left in RUN_DIR/error-rank{N}.json, the first failure first."""
    found = []
    for p in Path(run_dir).glob(ERROR_FILE.format(rank="*")):
        try:
            found.append(json.loads(p.read_text()))
        except (OSError, json.JSONDecodeError):
            continue
    return sorted(found, key=lambda e: e.get("t", 0))


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
    errors = rank_errors(run_dir)
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
            last = ev.final(events) or finish(run_dir, proc.returncode)
            if last and last not in events:
                print(format_event(last), file=out, flush=True)
            return last
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
