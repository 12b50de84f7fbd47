"""Real multi-process training on the CPU (gloo): torchrun with 2 processes for DDP, DeepSpeed ZeRO-2 and ZeRO-3
through the trainer, against one process with the same global batch; abort, a hanging rank, a crashing rank."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import ROOT, tiny_spec

from studio.run import events as ev
from studio.launch import command as launch
from studio.launch import process
from studio.run import status as runs
from studio import spec as specmod

STEPS = 6
TOLERANCE = 0.02  # per-step loss; the loss falls by ~0.3 over the run, other seeds give other curves


def _overrides(tiny_model, tmp_path, name, batch, *extra, steps=STEPS):
    return tiny_spec(tiny_model, tmp_path, output_dir=str(tmp_path / name), **{
        "train.per_device_train_batch_size": batch, "train.max_steps": steps, "train.save_steps": 1000}) + list(extra)


def _cli_train(overrides, env=None, timeout=600):
    cmd = [sys.executable, "-m", "studio", "train", str(ROOT / "examples" / "identity_lora.yaml"), *overrides]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout, env=env)


def _losses(run_dir: Path) -> list[float]:
    return [e["loss"] for e in ev.read_all(run_dir) if e["event"] == "log"]


def _left(run_dir: Path) -> list[str]:
    """Command lines of live processes that still name the run folder."""
    found = []
    for p in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            cmd = p.read_bytes().replace(b"\0", b" ").decode(errors="replace")
            stat = (p.parent / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if str(run_dir) in cmd and stat[0] != "Z":
            found.append(cmd)
    return found


def _wait_for_step(run_dir: Path, step: int, proc, timeout=300):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if any(e["event"] == "log" and e["step"] >= step for e in ev.read_all(run_dir)):
            return
        assert proc.poll() is None, (run_dir / "output.log").read_text()[-3000:]
        time.sleep(0.3)
    raise AssertionError(f"no step {step} in {timeout}s")


@pytest.fixture(scope="module")
def one_process(tiny_model, tmp_path_factory):
    """The reference: one process, batch 4."""
    tmp = tmp_path_factory.mktemp("one")
    res = _cli_train(_overrides(tiny_model, tmp, "run", 4))
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    return tmp / "run"


@pytest.mark.parametrize("engine", ["ddp", "z2", "z3"])
def test_two_processes_match_one_process(engine, one_process, tiny_model, tmp_path):
    extra = ["launch.nproc_per_node=2"] + ([f"launch.deepspeed={engine}"] if engine != "ddp" else [])
    res = _cli_train(_overrides(tiny_model, tmp_path, "run", 2, *extra))
    run_dir = tmp_path / "run"
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    log = (run_dir / "output.log").read_text()
    assert "torch.distributed.run --nproc_per_node=2" in log.splitlines()[0]
    assert "shm_comm" not in log  # CPU ranks talk over gloo: nothing compiled, no rank spinning while it waits

    events = ev.read_all(run_dir)
    kinds = [e["event"] for e in events]
    assert kinds.count("start") == 1 and kinds.count("done") == 1 and kinds[-1] == "done"  # one writer: rank 0
    assert [e["step"] for e in events if e["event"] == "log"] == list(range(1, STEPS + 1))
    ref, got = _losses(one_process), _losses(run_dir)
    print(f"{engine}: 1 process {ref}\n{engine}: 2 processes {got}")
    assert ref[-1] < ref[0] - 5 * TOLERANCE  # the curve moves much more than the tolerance
    assert max(abs(a - b) for a, b in zip(ref, got)) < TOLERANCE
    assert not _left(run_dir)

    # the adapter (gathered from the shards under ZeRO-3) loads in plain PEFT and holds the trained weights
    import torch
    from peft import PeftModel
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    ours, theirs = load_file(run_dir / "adapter" / "adapter_model.safetensors"), load_file(one_process / "adapter" / "adapter_model.safetensors")
    assert ours.keys() == theirs.keys() and all(ours[k].shape == theirs[k].shape and ours[k].numel() > 0 for k in ours)
    assert all(ours[k].abs().max() > 0 for k in ours if "lora_B" in k)  # trained (B starts at zero)
    assert max((ours[k] - theirs[k]).abs().max().item() for k in ours) < 0.01
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32), run_dir / "adapter")
    b = next(p for n, p in model.named_parameters() if "lora_B" in n)
    assert b.abs().max() > 0


def test_abort_stops_both_ranks_at_one_step(tiny_model, tmp_path):
    spec = specmod.load(ROOT / "examples" / "identity_lora.yaml",
                        _overrides(tiny_model, tmp_path, "run", 2, "launch.nproc_per_node=2", steps=500))
    proc = launch.start(spec)
    run_dir = Path(spec.output_dir)
    _wait_for_step(run_dir, 2, proc)
    t0 = time.time()
    assert process.stop(run_dir, wait=False)  # as the web UI does: SIGTERM now, then a timer that kills what lingers
    assert process.stop(run_dir, grace=60)
    took = time.time() - t0
    proc.wait(timeout=30)
    last = ev.final(ev.read_all(run_dir))
    print(f"abort of 2 processes took {took:.1f}s, at step {last.get('step')}")
    assert last["event"] == "aborted" and not last.get("killed"), last  # both ranks stopped by themselves
    assert (run_dir / f"checkpoint-{last['step']}").is_dir() and (run_dir / "adapter" / "adapter_model.safetensors").exists()
    assert not _left(run_dir)


def test_abort_kills_a_hanging_rank(tiny_model, tmp_path):
    spec = specmod.load(ROOT / "examples" / "identity_lora.yaml",
                        _overrides(tiny_model, tmp_path, "run", 2, "launch.nproc_per_node=2", steps=500))
    proc = launch.start(spec)
    run_dir = Path(spec.output_dir)
    _wait_for_step(run_dir, 1, proc)
    info = runs.job_info(run_dir)
    ranks = [p for p in process.job_pids(info) if p != info["pid"]]
    rank1 = next(p for p in ranks if b"RANK=1\0" in Path(f"/proc/{p}/environ").read_bytes())
    os.kill(rank1, signal.SIGSTOP)  # hangs: it will never answer the others nor its signals
    t0 = time.time()
    process.stop(run_dir, grace=3)
    took = time.time() - t0
    proc.wait(timeout=30)
    print(f"abort with a hanging rank took {took:.1f}s")
    assert not _left(run_dir) and not runs.pid_alive(rank1)
    last = ev.final(ev.read_all(run_dir))
    assert last["event"] == "aborted" and last["killed"] is True
    assert runs.status(run_dir) == "aborted"


HOOK = '''
import os
if os.environ.get("RANK") == "1":  # make rank 1 fail during step 2, as an out-of-memory would
    from studio.run import events

    _write = events.EventWriter.write

    def write(self, event, **fields):
        if event == "log" and fields.get("step") == 2:
            raise RuntimeError("rank 1 ran out of memory at step 2")
        return _write(self, event, **fields)

    events.EventWriter.write = write
'''


def test_a_crashing_rank_ends_the_job_with_its_error(tiny_model, tmp_path):
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(HOOK)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(hook), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}
    res = _cli_train(_overrides(tiny_model, tmp_path, "run", 2, "launch.nproc_per_node=2", steps=50), env=env)
    run_dir = tmp_path / "run"
    assert res.returncode == 1, res.stdout[-3000:] + res.stderr[-3000:]
    events = ev.read_all(run_dir)
    errors = [e for e in events if e["event"] == "error"]
    assert len(errors) == 1 and events[-1] is errors[0] or events[-1] == errors[0]
    assert errors[0]["message"] == "rank 1: RuntimeError: rank 1 ran out of memory at step 2" and errors[0]["rank"] == 1
    assert "Traceback" in errors[0]["traceback"]
    assert "job failed: rank 1: RuntimeError: rank 1 ran out of memory" in res.stderr
    assert runs.status(run_dir) == "error" and not _left(run_dir)
    assert json.loads((run_dir / "error-rank1.json").read_text())["rank"] == 1


def _stop_all(procs, run_dir: Path) -> str:
    """Kill what is left of the nodes and return their logs (the failure message)."""
    for p in procs:
        if p.poll() is None:
            for pid in process.job_pids({"pid": p.pid, "pgid": p.pid}):
                process.kill_tree(pid)
    logs = [f"--- {f.name}\n" + f.read_text()[-3000:] for f in sorted(run_dir.glob("output*.log"))]
    return "\n".join(logs + [f"--- node {i} stdout\n" + (p.communicate()[0] or "")[-2000:] for i, p in enumerate(procs)])


def test_two_nodes_on_one_machine(one_process, tiny_model, tmp_path):
    """nnodes=2 for real: node 0 and node 1 are two `studio train` commands sharing the run folder, as on a shared filesystem."""
    over = _overrides(tiny_model, tmp_path, "run", 2, "launch.nnodes=2", "launch.nproc_per_node=1",
                      f"launch.master_port={launch.free_port()}")
    cmd = [sys.executable, "-m", "studio", "train", str(ROOT / "examples" / "identity_lora.yaml"), *over]
    run_dir = tmp_path / "run"
    nodes = [subprocess.Popen([*cmd, f"launch.node_rank={n}"], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True, start_new_session=True) for n in (0, 1)]
    deadline = time.time() + 480
    while any(p.poll() is None for p in nodes) and time.time() < deadline:
        if any(p.poll() not in (None, 0) for p in nodes):
            break  # one node failed: the other may wait for it until torchrun's rendezvous timeout
        time.sleep(1)
    if any(p.returncode != 0 for p in nodes):
        pytest.fail(f"nodes ended {[p.poll() for p in nodes]}:\n{_stop_all(nodes, run_dir)}")
    out0, out1 = (p.communicate()[0] for p in nodes)
    assert "node 1 of 2: running its ranks" in out1 and "done:" in out0
    assert "--nnodes=2 --node_rank=1" in (run_dir / "output-node1.log").read_text().splitlines()[0]
    assert runs.job_info(run_dir)["argv"][-1] == str(run_dir) and "--node_rank=0" in " ".join(runs.job_info(run_dir)["argv"])
    assert max(abs(a - b) for a, b in zip(_losses(one_process), _losses(run_dir))) < TOLERANCE
    assert [e["event"] for e in ev.read_all(run_dir)].count("start") == 1 and runs.status(run_dir) == "done"


def test_a_node_stops_when_node_0_has_ended(tiny_model, tmp_path):
    """Node 1 of a job whose node 0 has already failed: its ranks wait in the rendezvous; node 0's final event in the
    shared folder makes node 1 stop them instead of waiting out torchrun's 15-minute timeout."""
    from studio.launch import follow

    spec = specmod.load(ROOT / "examples" / "identity_lora.yaml", _overrides(
        tiny_model, tmp_path, "run", 2, "launch.nnodes=2", "launch.node_rank=1", f"launch.master_port={launch.free_port()}"))
    proc = launch.start(spec)
    run_dir = Path(spec.output_dir)
    time.sleep(3)
    assert proc.poll() is None
    ev.EventWriter(run_dir, enabled=True).write("error", message="node 0: out of memory")
    t0 = time.time()
    assert follow._wait_node(run_dir, proc, 0, grace=1) == 1
    print(f"node 1 stopped {time.time() - t0:.1f}s after node 0's error")
    assert time.time() - t0 < 60 and not _left(run_dir)
