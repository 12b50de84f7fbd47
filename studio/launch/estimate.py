"""A rough GPU memory estimate for a training spec, before anything is loaded (no torch: the web UI calls it).

    python -m studio.launch.estimate examples/identity_lora.yaml [key=value ...]

Per GPU, in bytes, for P parameters (E of them in embeddings), T trainable, N = nproc_per_node x nnodes:
    weights     P x dtype bytes (bf16 2, fp32 4); 4-bit: 0.55 per layer weight, 8-bit: 1 (embeddings stay)
    training    adapters (LoRA and the other PEFT methods) are fp32: 4 weight + 4 grad + 8 Adam = 16 x T
                full / freeze in the model's dtype: 1 grad + 2 Adam states x dtype bytes; under DeepSpeed
                2 grad + 4 master + 8 Adam; ZeRO-2 splits gradients and optimizer over N, ZeRO-3 weights too;
                `_offload` moves the optimizer (z3: the weights too) to CPU memory
    activations per token and layer (16 h + 6 i) x act bytes / 2 (inputs of each matmul, norms, SwiGLU;
                flash/SDPA attention keeps no s x s matrix); checkpointing keeps 2 h per layer plus one layer;
                logits and their gradient: tokens x vocab x 10 bytes
    CUDA        0.5 GiB context and workspaces
Tokens = per_device_train_batch_size x cutoff_len (the worst case: every example as long as cutoff_len).
Real use differs by some 10-30% (allocator caching, fragmentation, kernels): leave headroom.
"""
from __future__ import annotations

import json
import struct
import sys
from dataclasses import dataclass, field
from pathlib import Path

GIB = 2**30
PEFT = ("lora", "adalora", "ia3", "prefix", "prompt", "ptuning", "ptuning_v2")


@dataclass
class Estimate:
    params: int
    trainable: int
    weights: float  # bytes per GPU, as all below
    training: float  # gradients, optimizer states (and fp32 adapter weights)
    activations: float
    cuda: float = 0.5 * GIB
    cpu: float = 0.0  # offloaded to CPU memory (DeepSpeed _offload presets)
    notes: list = field(default_factory=list)

    @property
    def total(self) -> float:
        return self.weights + self.training + self.activations + self.cuda

    def text(self) -> str:
        g = lambda b: f"{b / GIB:.1f}"  # noqa: E731
        line = (f"≈ {g(self.total)} GiB per GPU (weights {g(self.weights)}, gradients and optimizer {g(self.training)}, "
                f"activations {g(self.activations)}, CUDA {g(self.cuda)})")
        if self.cpu:
            line += f", plus {g(self.cpu)} GiB of CPU memory (offload)"
        line += f"; {self.params / 1e6:.0f}M parameters, {self.trainable / 1e6:.2f}M trained"
        return line + "".join(f"\n{n}" for n in self.notes)


def model_dir(name_or_path: str) -> Path | None:
    """The local folder of a model name, without converting or downloading anything."""
    from studio.model import models

    if name_or_path == models.DEFAULT:
        p = models.cache_root() / "models" / models.DEFAULT_NAME
    else:
        p = Path(name_or_path).expanduser()
    return p if (p / "config.json").is_file() else None


def _text_config(cfg: dict) -> dict:
    return cfg.get("text_config") or cfg


def count_params(folder: Path) -> int | None:
    """Exact parameter count from the safetensors headers (no weights read)."""
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        return None
    total = 0
    for f in files:
        with open(f, "rb") as fh:
            (n,) = struct.unpack("<Q", fh.read(8))
            header = json.loads(fh.read(n))
        for name, meta in header.items():
            if name != "__metadata__":
                count = 1
                for d in meta["shape"]:
                    count *= d
                total += count
    return total


def shapes(cfg: dict) -> dict:
    c = _text_config(cfg)
    h, layers = c["hidden_size"], c["num_hidden_layers"]
    heads = c.get("num_attention_heads", 1)
    kv = c.get("num_key_value_heads") or heads
    head_dim = c.get("head_dim") or h // heads
    inter = c.get("intermediate_size") or 4 * h
    vocab = c["vocab_size"]
    # the linear layers of one decoder layer: (in, out)
    linears = [(h, heads * head_dim), (h, kv * head_dim), (h, kv * head_dim), (heads * head_dim, h),
               (h, inter), (h, inter), (inter, h)]
    embed = vocab * h * (1 if c.get("tie_word_embeddings", cfg.get("tie_word_embeddings", True)) else 2)
    return {"h": h, "layers": layers, "inter": inter, "vocab": vocab, "linears": linears, "embed": embed,
            "layer_params": sum(i * o for i, o in linears) + 2 * h}


def trainable_params(spec, s: dict, params: int) -> int:
    m = spec.method
    kind = m.finetuning_type
    if kind == "full":
        return params
    if kind == "freeze":
        n = min(abs(m.freeze.trainable_layers), s["layers"])
        return n * s["layer_params"]
    if kind in ("lora", "adalora"):
        rank = m.lora.rank if kind == "lora" else m.adalora.init_rank
        layers = len(m.lora.layers) if kind == "lora" and m.lora.layers else s["layers"]
        return layers * sum(rank * (i + o) for i, o in s["linears"])
    if kind == "ia3":
        return s["layers"] * (2 * s["h"] + s["inter"])
    return m.prompt.num_virtual_tokens * s["h"] * (2 * s["layers"] if kind in ("prefix", "ptuning_v2") else 1)


def estimate(spec, cfg: dict | None = None, params: int | None = None) -> Estimate | None:
    """The estimate for `spec` on a GPU; None when the model's config.json is not on this machine."""
    notes = []
    if cfg is None:
        folder = model_dir(spec.model.name_or_path)
        if folder is None:
            return None
        cfg = json.loads((folder / "config.json").read_text())
        params = count_params(folder)
    s = shapes(cfg)
    if not params:
        params = s["layers"] * s["layer_params"] + s["embed"] + s["h"]
    t, la = spec.train, spec.launch
    dtype_bytes = 4 if t.compute_dtype == "fp32" else 2  # auto is bf16 on a GPU
    n = max(la.nproc_per_node * la.nnodes, 1)
    stage, offload = _zero(la.deepspeed)
    peft = spec.method.finetuning_type in PEFT
    trained = trainable_params(spec, s, params)

    body = params - s["embed"]
    qbit = spec.model.quantization_bit
    weights = s["embed"] * dtype_bytes + body * ({4: 0.55, 8: 1.0}.get(qbit, dtype_bytes))
    if peft:
        training = 16.0 * trained
        opt_part = 8.0 * trained
    elif stage is None:
        training = 3.0 * dtype_bytes * trained
        opt_part = 2.0 * dtype_bytes * trained
    else:
        training = 14.0 * trained  # 2 grad + 4 fp32 master + 8 Adam
        opt_part = 12.0 * trained
    cpu = 0.0
    if stage is not None and stage >= 2:
        training /= n
        opt_part /= n
    if stage == 3:
        weights /= n
    if offload:
        training -= opt_part
        cpu += opt_part * n
        if stage == 3:
            cpu += weights * n
            weights = 0.0
            notes.append("ZeRO-3 offload keeps the weights in CPU memory and streams them to the GPU layer by layer.")

    tokens = t.per_device_train_batch_size * spec.data.cutoff_len
    act_bytes = 4 if t.compute_dtype == "fp32" else 2
    per_layer = (16 * s["h"] + 6 * s["inter"]) * act_bytes / 2 * tokens
    if t.gradient_checkpointing:
        acts = s["layers"] * 2 * s["h"] * act_bytes / 2 * tokens + per_layer
    else:
        acts = s["layers"] * per_layer
    acts += tokens * s["vocab"] * 10
    if qbit and not t.gradient_checkpointing:
        notes.append("QLoRA usually runs with train.gradient_checkpointing=true: activations then shrink several times.")
    return Estimate(params=params, trainable=trained, weights=weights, training=training, activations=acts, cpu=cpu, notes=notes)


def _zero(deepspeed: str | None) -> tuple[int | None, bool]:
    """(ZeRO stage, offload) of a preset or JSON config; (None, False) without DeepSpeed."""
    if not deepspeed:
        return None, False
    if deepspeed.startswith("z") and deepspeed[1:2].isdigit():
        return int(deepspeed[1]), deepspeed.endswith("_offload")
    try:
        zero = json.loads(Path(deepspeed).read_text()).get("zero_optimization", {})
    except (OSError, json.JSONDecodeError, AttributeError):
        return 0, False
    return int(zero.get("stage", 0)), "offload_optimizer" in zero


def main(argv: list[str] | None = None) -> int:
    from studio import spec as specmod

    argv = sys.argv[1:] if argv is None else argv
    if not argv:
        print(__doc__)
        return 2
    try:
        spec = specmod.load(argv[0], argv[1:])
    except specmod.SpecError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    est = estimate(spec)
    print(est.text() if est else f"no config.json for {spec.model.name_or_path} on this machine: no estimate")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
