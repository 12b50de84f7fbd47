"""Shared fixtures: a tiny random Llama model (built here, offline) and a scratch copy of the demo data."""
from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA = ROOT.parent / "shared" / "data" / "llamafactory"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


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


def shared_dir(tmp_path_factory) -> Path:
    """A folder shared by every process of this test session (the workers of `pytest -n`, or the one process)."""
    base = tmp_path_factory.getbasetemp()
    return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


@pytest.fixture(scope="session")
def identity_run(tmp_path_factory) -> Path:
    """A finished `studio train examples/identity_lora.yaml` run on the default model, trained once per test session
    (the first worker that needs it trains it; the others wait under a file lock and read it).

    Set STUDIO_IDENTITY_RUN to an existing finished run folder to reuse it while developing.
    """
    import subprocess

    from filelock import FileLock

    reuse = os.environ.get("STUDIO_IDENTITY_RUN")
    if reuse and (Path(reuse) / "adapter" / "adapter_config.json").exists():
        return Path(reuse)
    shared = shared_dir(tmp_path_factory)
    out = shared / "identity" / "identity_lora"
    with FileLock(str(shared / "identity.lock")):
        if not (out / "adapter" / "adapter_config.json").exists():
            cmd = [sys.executable, "-m", "studio", "train", str(ROOT / "examples" / "identity_lora.yaml"),
                   f"output_dir={out}", f"data.dataset_dir={ROOT / 'data'}", *IDENTITY_OVERRIDES]
            res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900)
            assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    return out
