"""Children of the page's server are reaped when they end: a stopped job, an aborted one, one that ends on its own and
a queued job's waiter leave no zombie (`<defunct>`) behind, whichever tab follows them or none.

    .venv/bin/python -m pytest -q tests/test_reap.py
"""
from __future__ import annotations

import json
import sys
import time

import psutil
import pytest

from conftest import busy_run
from studio import spec as specmod
from studio.launch import command, queue
from studio.ui import jobs


def zombies() -> list[int]:
    out = []
    for p in psutil.Process().children():
        try:
            if p.status() == psutil.STATUS_ZOMBIE:
                out.append(p.pid)
        except psutil.NoSuchProcess:
            continue
    return out


def gone(pid: int, timeout: float = 30) -> bool:
    """The process has ended and been reaped (a zombie still exists until its parent waits for it)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if not psutil.pid_exists(pid):
            return True
        time.sleep(0.1)
    return not psutil.pid_exists(pid)


@pytest.fixture
def fake_job(monkeypatch):
    """The job's child is a small Python program (`code`) instead of a training run."""
    def use(code: str):
        monkeypatch.setattr(command, "command", lambda spec, run_dir: [sys.executable, "-c", code])
    return use


def started(tmp_path, name: str) -> tuple:
    spec = specmod.load(None, [f"output_dir={tmp_path / 'runs' / name}"])
    run = jobs.start(spec, tmp_path, tmp_path / "runs")
    return run, json.loads((run / "job.json").read_text())["pid"]


@pytest.mark.parametrize("how", ["stop", "abort"])
def test_a_stopped_job_is_reaped(tmp_path, fake_job, how):
    fake_job("import time; time.sleep(120)")
    run, pid = started(tmp_path, how)
    assert psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    if how == "stop":  # the API panel's Stop server
        assert jobs.stop(run)
    else:  # a tab's Abort
        assert jobs.abort({"run": str(run)}, "job").startswith("stopping")
    assert gone(pid), f"the stopped job is still here: {psutil.Process(pid).status()}"
    assert pid not in zombies()


def test_a_job_that_ends_on_its_own_is_reaped(tmp_path, fake_job):
    fake_job("print('done')")
    run, pid = started(tmp_path, "own-end")
    assert gone(pid), f"the finished job is still here: {psutil.Process(pid).status()}"
    assert pid not in zombies()


def test_the_waiter_of_a_cancelled_queued_job_is_reaped(tmp_path):
    runs_root = tmp_path / "runs"
    busy = runs_root / "busy"
    with busy_run(busy):
        run = jobs.start(specmod.load(None, [f"output_dir={runs_root / 'second'}"]), tmp_path, runs_root)
        waiter = json.loads((run / queue.QUEUED).read_text())["waiter"]
        queue.cancel("second", runs_root)  # the waiter sees it and exits
        assert gone(waiter, 60), f"the waiter is still here: {psutil.Process(waiter).status()}"
        assert waiter not in zombies()
