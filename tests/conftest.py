"""Shared fixtures: a tiny random Llama model (built here, offline) and a scratch copy of the demo data."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA = ROOT.parent / "shared" / "data" / "llamafactory"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
if os.environ.get("PYTEST_XDIST_WORKER"):  # `pytest -n 2` on 2 cores: one thread per process, none waits for a core
    os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture(scope="session")
def default_model_dir() -> Path:
    """The embedded default model, converted once to a cached safetensors folder."""
    from studio.model import models

    return models.default_path()


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory, default_model_dir) -> Path:
    """A 2-layer random Llama with the default model's tokenizer and chat template (fast to train)."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    out = tmp_path_factory.mktemp("tiny") / "tiny-llama"
    tok = AutoTokenizer.from_pretrained(default_model_dir)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                      tie_word_embeddings=True)
    torch.manual_seed(0)
    LlamaForCausalLM(cfg).save_pretrained(out)
    tok.save_pretrained(out)
    return out


@pytest.fixture
def data_dir(tmp_path) -> Path:
    """A scratch copy of the project's demo data (tests may edit it)."""
    d = tmp_path / "data"
    shutil.copytree(ROOT / "data", d)
    return d


@pytest.fixture
def studio_cmd():
    return [sys.executable, "-m", "studio"]


def tiny_spec(tiny_model: Path, tmp_path: Path, data_dir: Path | str = ROOT / "data", **over) -> list[str]:
    """Overrides that make a fast training job on the tiny model."""
    base = {"output_dir": str(tmp_path / "run"), "model.name_or_path": str(tiny_model), "data.dataset_dir": str(data_dir), "data.dataset": "[identity]",
            "data.cutoff_len": 128, "train.max_steps": 4, "train.save_steps": 2, "train.per_device_train_batch_size": 2,
            "train.gradient_accumulation_steps": 1, "train.learning_rate": 1e-2}
    base.update(over)
    return [f"{k}={v}" for k, v in base.items()]


IDENTITY_OVERRIDES: list[str] = []  # the shipped example as it is: it must teach the name in one run


@contextmanager
def busy_run(folder: Path, *overrides: str):
    """A run folder (`folder`, its spec.yaml from `overrides`) whose job is running: a `sleep 60` process group in its
    job.json, killed when the block ends."""
    from studio import spec as specmod

    specmod.dump(specmod.load(None, [f"output_dir={folder}", *overrides]), folder / "spec.yaml")
    sleeper = subprocess.Popen(["sleep", "60"], start_new_session=True)
    try:
        (folder / "job.json").write_text(json.dumps({"pid": sleeper.pid, "pgid": sleeper.pid, "argv": ["sleep"], "started": 1.0}))
        yield sleeper
    finally:
        sleeper.kill()
        sleeper.wait()


def shared_dir(tmp_path_factory) -> Path:
    """A folder shared by every process of this test session (the workers of `pytest -n`, or the one process)."""
    base = tmp_path_factory.getbasetemp()
    return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


def _identity_cmd(out: Path) -> list[str]:
    return [sys.executable, "-m", "studio", "train", str(ROOT / "examples" / "identity_lora.yaml"), f"output_dir={out}",
            f"data.dataset_dir={ROOT / 'data'}", *IDENTITY_OVERRIDES]


@pytest.hookimpl(tryfirst=True)  # before pytest-xdist starts the workers
def pytest_sessionstart(session):
    """Under `pytest -n N` the first process starts the shared identity run at once, in the background at a low
    priority (it takes the cores the workers leave), so that it is ready, or nearly, when the first test that needs
    it comes; the workers wait for it, not train it."""
    cfg = session.config
    if (os.environ.get("PYTEST_XDIST_WORKER") or not getattr(cfg.option, "numprocesses", None)
            or os.environ.get("STUDIO_IDENTITY_RUN") or "not slow" in (cfg.option.markexpr or "")):
        return
    import subprocess

    base = cfg._tmp_path_factory.getbasetemp()
    out = base / "identity" / "identity_lora"
    out.parent.mkdir(parents=True, exist_ok=True)
    # every core, but only what the tests leave; its threads wait without spinning: with the default (spinning) wait
    # of OpenMP, a low-priority 2-thread run beside one busy process took 90 CPU-s a step instead of 5
    env = {**{k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}, "OMP_WAIT_POLICY": "PASSIVE"}
    cfg.identity_proc = subprocess.Popen(_identity_cmd(out), cwd=ROOT, stdout=open(base / "identity.log", "wb"),
                                         stderr=subprocess.STDOUT, env=env, preexec_fn=lambda: os.nice(15))
    (base / "identity.pid").write_text(str(cfg.identity_proc.pid))


def pytest_sessionfinish(session):
    proc = getattr(session.config, "identity_proc", None)
    if proc is not None and proc.poll() is None:
        proc.terminate()
        proc.wait(timeout=60)


@pytest.fixture(scope="session")
def identity_run(tmp_path_factory) -> Path:
    """A finished `studio train examples/identity_lora.yaml` run on the default model, trained once per test session
    (started in the background by pytest_sessionstart under `pytest -n`; otherwise by the first test that needs it).

    Set STUDIO_IDENTITY_RUN to an existing finished run folder to reuse it while developing.
    """
    import subprocess

    from filelock import FileLock

    from studio.run.status import pid_alive

    reuse = os.environ.get("STUDIO_IDENTITY_RUN")
    if reuse and (Path(reuse) / "adapter" / "adapter_config.json").exists():
        return Path(reuse)
    shared = shared_dir(tmp_path_factory)
    out = shared / "identity" / "identity_lora"
    with FileLock(str(shared / "identity.lock")):
        pid = shared / "identity.pid"
        if pid.exists():  # started in the background: wait for it to end
            while pid_alive(int(pid.read_text())):
                time.sleep(1)
            log = (shared / "identity.log").read_text(errors="replace")
            assert (out / "adapter" / "adapter_config.json").exists(), log[-3000:]
        elif not (out / "adapter" / "adapter_config.json").exists():
            res = subprocess.run(_identity_cmd(out), cwd=ROOT, capture_output=True, text=True, timeout=900)
            assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    return out
