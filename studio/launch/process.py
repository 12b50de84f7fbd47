"""A job's process tree: find every process of it and stop it (psutil, so no /proc parsing here).

    stop(run_dir)            # SIGTERM once (the job saves and writes `aborted`); SIGKILL what is left after a grace period
    job_pids(info)           # the live processes of a job: its process group and every descendant of its first process
    reap_on_exit(proc)       # a child of this process is waited for the moment it ends: no zombie after a stop or its own end
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
from pathlib import Path

import psutil

from studio.run import events as ev
from studio.run import status as runs


def job_pids(info: dict) -> set[int]:
    """The live processes of a job: its process group and all descendants of its first process (torchrun starts each
    rank in a session of its own, so the group alone misses them)."""
    found = set()
    for p in psutil.process_iter(["status"]):
        try:
            if p.info["status"] != psutil.STATUS_ZOMBIE and os.getpgid(p.pid) == info["pgid"]:
                found.add(p.pid)
        except (ProcessLookupError, psutil.NoSuchProcess):
            continue
    for root in found | {info["pid"]}:
        try:
            kids = psutil.Process(root).children(recursive=True)
        except psutil.NoSuchProcess:
            continue
        found |= {k.pid for k in kids if _alive(k)}
    return {p for p in found if runs.pid_alive(p)}


def reap_on_exit(proc: subprocess.Popen) -> subprocess.Popen:
    """Wait for a child of this process in a thread of its own, so that it is reaped as soon as it ends (stopped,
    aborted or at its own end), whoever follows it or not: a child that nobody waits for stays a zombie (`<defunct>`)
    for as long as this process lives."""
    threading.Thread(target=proc.wait, name=f"reap-{proc.pid}", daemon=True).start()
    return proc


def _alive(p: psutil.Process) -> bool:
    try:
        return p.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def kill_tree(pid: int) -> None:
    """SIGKILL a process and its group (a rank's group holds its own workers)."""
    try:
        group = os.getpgid(pid)
    except ProcessLookupError:
        return
    if group != os.getpgid(0):
        signal_group(group, signal.SIGKILL)
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        pass


def stop(run_dir: str | Path, grace: float = 30.0, wait: bool = True) -> bool:
    """Ask the job to stop (SIGTERM: it saves and writes `aborted`); kill every process of it after `grace` s."""
    info = runs.job_info(run_dir)
    if not info or not runs.group_alive(info["pgid"]):
        return False
    pgid = info["pgid"]
    pids = job_pids(info)
    if not info.get("stopping"):  # once: a second SIGTERM makes torchrun drop its own graceful shutdown
        signal_group(pgid, signal.SIGTERM)
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
        signal_group(pgid, signal.SIGKILL)
        for p in pids:
            kill_tree(p)
        time.sleep(0.5)
    if not ev.final(ev.read_all(run_dir)):
        last = [e for e in ev.read_all(run_dir) if e["event"] == "log"]
        ev.EventWriter(run_dir, enabled=True).write("aborted", step=last[-1]["step"] if last else 0, killed=True)
    return True
