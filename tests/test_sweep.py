"""Sweeps (one queued run per point in one folder, compared) and resuming a crashed run in one action."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
import yaml

from conftest import ROOT, tiny_spec
from studio import spec as specmod
from studio.evaluate import scorecard
from studio.launch import sweep
from studio.run import events as ev
from studio.run import status as runs


def _studio(*args, timeout=600):
    return subprocess.run([sys.executable, "-m", "studio", *args], capture_output=True, text=True, cwd=ROOT, timeout=timeout)


def test_grid_and_random_points_and_their_errors():
    assert sweep.expand({"train.learning_rate": [1, 2], "method.lora.rank": [8, 16, 32]})[:2] == [
        {"train.learning_rate": 1, "method.lora.rank": 8}, {"train.learning_rate": 1, "method.lora.rank": 16}]
    assert len(sweep.expand({"train.learning_rate": [1, 2], "method.lora.rank": [8, 16, 32]})) == 6
    pts = sweep.expand({"mode": "random", "samples": 5, "seed": 1, "train.learning_rate": {"low": 1e-5, "high": 1e-3, "log": True}})
    assert len(pts) == 5 and all(1e-5 <= p["train.learning_rate"] <= 1e-3 for p in pts)
    assert pts == sweep.expand({"mode": "random", "samples": 5, "seed": 1, "train.learning_rate": {"low": 1e-5, "high": 1e-3, "log": True}})
    for section, words in (({"train.lr": [1]}, "`train.lr` is not a spec field"), ({"mode": "best", "train.seed": [1]}, "sweep.mode"),
                           ({"train.seed": {"low": 1, "high": 2}}, "needs mode: random"), ({"train.seed": []}, "give a list"),
                           ({"mode": "random", "train.seed": [1]}, "sweep.samples")):
        with pytest.raises(specmod.SpecError, match=words):
            sweep.expand(section)


def test_a_sweep_queues_one_run_per_point_and_compares_them(tiny_model, tmp_path):
    spec_file = tmp_path / "sweep.yaml"
    data = specmod.read_yaml(ROOT / "examples" / "identity_lora.yaml")
    data["sweep"] = {"train.learning_rate": [1.0e-2, 1.0e-5]}
    spec_file.write_text(yaml.safe_dump(data))
    over = tiny_spec(tiny_model, tmp_path, output_dir=tmp_path / "runs" / "lr", **{"train.max_steps": 2, "data.val_size": 0.2})
    over += ["train.benchmarks=[studio_identity]", "eval.benchmark_limit=4"]  # scored after each run; the base once
    dry = _studio("train", str(spec_file), *over, "sweep.train.seed=[1]", "--dry-run")
    assert dry.returncode == 0 and "2 points, grid" in dry.stdout and "point-2  train.learning_rate=1e-05 train.seed=1" in dry.stdout, dry.stdout
    assert not (tmp_path / "runs").exists()
    res = _studio("train", str(spec_file), *over)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    folder = tmp_path / "runs" / "lr"
    assert "point-1  train.learning_rate=0.01: started" in res.stdout and "point-2  train.learning_rate=1e-05: queued at position 1" in res.stdout
    points = sweep.points_of(folder)
    assert [p.name for p in points] == ["point-1", "point-2"] and all(runs.status(p) == "done" for p in points)
    first, second = (ev.read_all(p) for p in points)
    assert first[-1]["t"] <= runs.job_info(points[1])["started"]  # one after the other
    assert [r.name for r in runs.list_runs(tmp_path / "runs")] == ["lr/point-2", "lr/point-1"]
    table = sweep.compare(points)
    assert table["columns"] == ["run", "status", "train.learning_rate", "final train loss", "best eval loss", "studio_identity", "best"]
    evals = [ev.final(e)["eval_loss"] for e in (first, second)]
    assert [r[4] for r in table["rows"]] == evals
    assert [r[6] for r in table["rows"]] == ["best" if e == min(evals) else "" for e in evals]
    bench = [scorecard.read(p) for p in points]
    assert [r[5] for r in table["rows"]] == [b["models"][p.name]["studio_identity"]["value"] for b, p in zip(bench, points)]
    assert bench[1]["models"]["base"]["studio_identity"]["cached"]  # the base scored once, by the first point (or earlier)
    assert ev.final(first)["bench/studio_identity"] == round(bench[0]["models"]["point-1"]["studio_identity"]["value"], 4)
    assert "best eval loss" in res.stdout and "lr/point-1" in res.stdout
    again = _studio("train", str(spec_file), *over)
    assert again.returncode == 2 and "already exists" in again.stderr and "Traceback" not in again.stderr


def test_a_crashed_run_resumes_in_one_action(tiny_model, tmp_path):
    args = tiny_spec(tiny_model, tmp_path, **{"train.max_steps": 6, "train.save_steps": 2})
    proc = subprocess.Popen([sys.executable, "-m", "studio", "train", str(ROOT / "examples" / "identity_lora.yaml"), *args, "--detach"],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    proc.communicate(timeout=120)
    run = tmp_path / "run"
    deadline = time.time() + 300
    while not any(e["event"] == "checkpoint" for e in ev.read_all(run)) and time.time() < deadline:
        time.sleep(0.3)
    os.killpg(runs.job_info(run)["pgid"], signal.SIGKILL)
    while runs.is_running(run):
        time.sleep(0.2)
    if runs.status(run) == "done":
        pytest.skip("the run ended before it could be killed")
    assert runs.status(run) == "crashed" and runs.resumable(run)
    listing = _studio("runs", "--root", str(tmp_path))
    assert f"can be resumed: studio train --resume {run}" in listing.stdout
    res = _studio("train", "--resume", str(run))
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    start = [e for e in ev.read_all(run) if e["event"] == "start"][-1]
    assert start["resumed_from"] >= 2 and ev.read_all(run)[-1]["event"] == "done" and ev.read_all(run)[-1]["step"] == 6
    assert not runs.resumable(run)
    refused = _studio("train", "--resume", str(run))
    assert refused.returncode == 2 and "it is done" in refused.stderr
