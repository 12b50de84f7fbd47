"""What a job runs, and starting it. A job is a child process in its own process group that reads RUN_DIR/spec.yaml.

    argv = command(spec, run_dir)      # pure: what will run (one process, or torchrun for several / DeepSpeed)
    text = describe(spec)              # the same as shell lines, one per node (--dry-run, the UI's Preview)
    proc = start(spec)                 # writes spec.yaml and job.json, starts the child detached

Stopping is process.stop(run_dir); following and the final event, follow.py; the rules checked first, preflight.py.
"""
from __future__ import annotations

import json
import os
import random
import shlex
import socket
import subprocess
import sys
import time
from pathlib import Path

from studio import spec as specmod
from studio.run import job
from studio.run import status as runs
from studio.spec import JobSpec
from studio.spec.tasks import TASK_TABLE

ENTRY = {t.name: t.module for t in TASK_TABLE.values()}
DEFAULT_PORT = 29500  # torchrun's own default; every node of a multi-node job must use the same port


_PORTS = random.SystemRandom()


def free_port() -> int:
    """A free TCP port below the kernel's ephemeral range (32768 and up), so that no outgoing connection takes it
    between now and the moment a server binds it. Drawn from the system's randomness, not from `random`'s global
    state, which libraries seed (transformers' set_seed): two processes seeded alike would pick the same ports."""
    for port in _PORTS.sample(range(20000, 32000), 200):
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


def prepare(spec: JobSpec) -> Path:
    """Write RUN_DIR/spec.yaml (and clear the rank errors of an earlier attempt in this folder)."""
    run_dir = Path(spec.output_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    specmod.dump(spec, run_dir / "spec.yaml")
    for old in run_dir.glob(job.ERROR_FILE.format(rank="*")):
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
    argv = command(spec, run_dir)
    log = open(run_dir / ("output.log" if node == 0 else f"output-node{node}.log"), "ab")
    log.write(f"$ {shell_line(spec, run_dir)}\n".encode())
    log.flush()
    proc = subprocess.Popen(
        argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        start_new_session=True, env=child_env(spec),
    )
    log.close()
    info = {"pid": proc.pid, "pgid": proc.pid, "argv": argv, "started": time.time(), "host": socket.gethostname()}
    (run_dir / (runs.JOB if node == 0 else f"job-node{node}.json")).write_text(json.dumps(info))
    return proc


