"""The queue: jobs on busy devices wait their turn (no page, no server), run one after another, and can be cancelled
and moved; the page and the CLI queue with the same words."""
from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import ROOT, busy_run, tiny_spec
from studio import spec as specmod
from studio.launch import queue
from studio.run import events as ev
from studio.run import status as runs


def _studio(*args, timeout=120):
    return subprocess.run([sys.executable, "-m", "studio", *args], capture_output=True, text=True, cwd=ROOT, timeout=timeout)


def _wait(cond, timeout=240.0, what=""):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if cond():
            return
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


def test_detached_jobs_on_the_same_devices_run_one_after_another(tiny_model, tmp_path):
    root = tmp_path / "runs"
    names = ["a", "b", "c"]
    procs = [subprocess.Popen([sys.executable, "-m", "studio", "train", str(ROOT / "examples" / "identity_lora.yaml"),
                               *tiny_spec(tiny_model, tmp_path, output_dir=root / n, **{"train.max_steps": 2}), "--detach"],
                              cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for n in names]
    outs = [p.communicate(timeout=120) for p in procs]  # all three started within a second; --detach returns at once
    assert all(p.returncode == 0 for p in procs), outs
    assert sum("queued at position" in o for o, _ in outs) == 2 and sum("started in the background" in o for o, _ in outs) == 1
    first = next(n for n, (o, _) in zip(names, outs) if "started in the background" in o)
    waiting = [e.name for e in queue.entries(root)]
    assert len(waiting) == 2 and first not in waiting
    assert all(runs.status(root / n) == "queued" for n in waiting)

    listing = _studio("queue", "--root", str(root))
    assert listing.returncode == 0, listing.stderr
    lines = [ln for ln in listing.stdout.splitlines() if ln.strip()[:1].isdigit()]
    assert [ln.split()[:2] for ln in lines] == [["1", waiting[0]], ["2", waiting[1]]]
    assert all(f"{first} is running on the same devices" in ln for ln in lines), lines

    moved = _studio("queue", "move", waiting[1], "--to", "1", "--root", str(root))
    assert moved.returncode == 0, moved.stderr
    order = [first, waiting[1], waiting[0]]

    # no page, no terminal: the waiters alone start the rest
    _wait(lambda: all(runs.status(root / n) in ev.FINAL for n in order), what="the three jobs to end")
    spans = []
    for n in order:
        events = ev.read_all(root / n)
        assert events[-1]["event"] == "done", events[-1]
        spans.append((runs.job_info(root / n)["started"], events[-1]["t"]))
    assert [s for s in spans] == sorted(spans)  # the moved one ran second
    assert all(spans[i][1] <= spans[i + 1][0] for i in range(2)), spans  # no overlap
    assert "no jobs waiting" in _studio("queue", "--root", str(root)).stdout


def test_cli_and_page_queue_behind_a_busy_device_with_the_same_words(tmp_path):
    """One rule for `studio train` and the page: a running job on the same devices queues the next; other devices start."""
    from studio.ui import jobs

    root = tmp_path / "runs"
    busy = root / "busy"
    with busy_run(busy, "launch.devices=0"):
        spec = specmod.load(ROOT / "examples" / "identity_lora.yaml", [f"output_dir={root / 'page'}", "launch.devices=0,1"])
        out = jobs.start(spec, tmp_path, root)
        cli = _studio("train", "examples/identity_lora.yaml", f"output_dir={root / 'cli'}", "launch.devices=1",
                      f"data.dataset_dir={ROOT / 'data'}", "--detach")
        assert cli.returncode == 0, cli.stderr
        assert "busy is running on the same devices" in jobs.notes[str(out)] and "queued at position 1" in jobs.notes[str(out)]
        assert "queued at position 2: page is queued ahead on the same devices" in cli.stdout  # 1 is busy only through page
        assert [e.name for e in queue.entries(root)] == ["page", "cli"]
        with pytest.raises(specmod.SpecError, match="waiting in the queue"):
            jobs.start(spec, tmp_path, root)
        queue.cancel("cli", root)  # first: cancelling `page` would let it start on device 1
        res = _studio("queue", "cancel", "page", "--root", str(root))
        assert res.returncode == 0 and "will not start" in res.stdout, res.stderr
        bad = _studio("queue", "cancel", "page", "--root", str(root))
        assert bad.returncode == 2 and "is not in the queue" in bad.stderr and "Traceback" not in bad.stderr
        gone = ev.read_all(root / "page")
        assert [e["event"] for e in gone] == ["aborted"] and gone[0]["message"] == "cancelled before it started"
        assert runs.job_info(root / "page") is None and runs.status(root / "page") == "aborted"
        _wait(lambda: not queue.entries(root), 10, "the queue to empty")


def test_a_dead_waiter_is_started_again(tmp_path):
    root = tmp_path / "runs"
    busy = root / "busy"
    with busy_run(busy):
        spec = specmod.load(ROOT / "examples" / "identity_lora.yaml", [f"output_dir={root / 'next'}"])
        proc, note = queue.submit(spec)
        assert proc is None and "busy is running" in note
        pid = json.loads((root / "next" / "queued.json").read_text())["waiter"]
        subprocess.run(["kill", "-9", str(pid)])
        _wait(lambda: not runs.pid_alive(pid), 10, "the waiter to die")
        assert queue.revive(root) == 1 and queue.revive(root) == 0
        queue.submit(specmod.load(ROOT / "examples" / "identity_lora.yaml", [f"output_dir={root / 'later'}"]))
        from studio.ui import runs_view  # the page's queue view: the same list and actions

        assert runs_view.queue_table(root)[["position", "run"]].values.tolist() == [[1, "next"], [2, "later"]]
        assert runs_view.queue_action(root, "move", "later", 1) == "moved later to position 1"
        assert runs_view.queue_table(root)["run"].tolist() == ["later", "next"]
        assert "is not in the queue" in runs_view.queue_action(root, "cancel", "nope", None)
        assert "--to 3" in runs_view.queue_action(root, "move", "next", 3)
        assert runs_view.queue_action(root, "cancel", "later", None) == "cancelled later: it will not start"
        queue.cancel("next", root)


def test_without_detach_the_cli_waits_its_turn_then_follows(tiny_model, tmp_path):
    root = tmp_path / "runs"
    busy = root / "busy"
    with busy_run(busy):
        cli = subprocess.Popen([sys.executable, "-m", "studio", "train", str(ROOT / "examples" / "identity_lora.yaml"),
                                *tiny_spec(tiny_model, tmp_path, output_dir=root / "next", **{"train.max_steps": 2})],
                               cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        _wait(lambda: runs.status(root / "next") == "queued", 60, "the job to be queued")
        time.sleep(2)
        assert cli.poll() is None  # it waits
    out, err = cli.communicate(timeout=400)
    assert cli.returncode == 0, out[-2000:] + err[-2000:]
    assert "queued at position 1: busy is running on the same devices" in out and "step 2/2" in out and "\ndone:" in out
    assert runs.status(root / "next") == "done"


def test_a_chat_model_on_a_gpu_holds_it(tmp_path):
    """The page's chat model registers as a holder: jobs on its GPU wait, others start; a dead holder counts no more."""
    root = tmp_path / "runs"
    spec = specmod.load(ROOT / "examples" / "identity_lora.yaml", [f"output_dir={root / 'next'}", "launch.devices=0"])
    other = specmod.load(ROOT / "examples" / "identity_lora.yaml", [f"output_dir={root / 'other'}", "launch.devices=1"])
    queue.hold(root, "chat-test", "0", "the page's chat model")
    assert queue.blocker(spec, root) == "the page's chat model holds the same devices" and queue.blocker(other, root) is None
    queue.release(root, "chat-test")
    assert queue.blocker(spec, root) is None
    dead = subprocess.Popen(["true"])
    dead.wait()
    (root / queue.HOLDERS / "gone.json").write_text(json.dumps({"pid": dead.pid, "devices": None, "what": "x"}))
    assert queue.blocker(spec, root) is None
