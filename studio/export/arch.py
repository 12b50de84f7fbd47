"""The model architectures written as GGUF, and what differs between them.

    arch = find(cfg)                  # an Arch, or raises Unsupported
    names = arch.tensor_names(n_layer) # HF tensor name -> llama.cpp name (the `gguf` package's TensorNameMap)

Follows llama.cpp's convert_hf_to_gguf.py: Llama and Mistral are written as `llama` (q/k rows permuted into
llama.cpp's interleaved rotary layout); Qwen2/Qwen2.5 as `qwen2` (q/k/v biases, rotary halves as in HF, no
permutation); Qwen3 as `qwen3` (per-head q_norm/k_norm, an explicit head_dim, no permutation). The tensor
names come from the `gguf` package (MODEL_TENSORS of the architecture), never from a table here.
"""
from __future__ import annotations

from dataclasses import dataclass


class Unsupported(ValueError):
    """This model cannot be written as GGUF here; the message says why and what to use instead."""


@dataclass(frozen=True)
class Arch:
    hf: str          # config.json `architectures[0]`
    gguf: str        # llama.cpp's architecture name (general.architecture)
    permute_qk: bool  # llama.cpp's `llama` rotary layout (interleaved pairs) instead of HF's halves

    def model_arch(self):
        import gguf

        return next(a for a, name in gguf.MODEL_ARCH_NAMES.items() if name == self.gguf)

    def tensor_names(self, n_layer: int):
        import gguf

        return gguf.get_tensor_name_map(self.model_arch(), n_layer)

    def allowed(self) -> set:
        """The llama.cpp tensors this architecture has (a tensor outside it would be ignored or refused by llama.cpp)."""
        import gguf

        return set(gguf.MODEL_TENSORS[self.model_arch()])


ARCHS = {a.hf: a for a in (
    Arch("LlamaForCausalLM", "llama", True),
    Arch("MistralForCausalLM", "llama", True),
    Arch("Qwen2ForCausalLM", "qwen2", False),
    Arch("Qwen3ForCausalLM", "qwen3", False),
)}


def find(cfg: dict) -> Arch:
    """The Arch for a config.json, or Unsupported naming the architectures that are written."""
    name = (cfg.get("architectures") or ["?"])[0]
    arch = ARCHS.get(name)
    if arch is None:
        raise Unsupported(f"GGUF is written for Llama-family, Mistral, Qwen2/Qwen2.5 and Qwen3 models ({', '.join(ARCHS)}); "
                          f"this model is {name}. The Hugging Face export is complete: convert it with llama.cpp's convert_hf_to_gguf.py")
    if arch.gguf == "qwen2" and cfg.get("use_sliding_window"):
        raise Unsupported("GGUF: this Qwen2 model uses sliding-window attention (use_sliding_window: true), which llama.cpp's "
                          "qwen2 does not apply; use llama.cpp's convert_hf_to_gguf.py")
    return arch


def tensor_name(arch: Arch, names, hf_name: str) -> str:
    """llama.cpp's name for an HF tensor of `arch`, or Unsupported."""
    import gguf

    found = names.get_type_and_name(hf_name, try_suffixes=(".weight", ".bias"))
    if found is None or found[0] not in arch.allowed():
        raise Unsupported(f"GGUF: tensor {hf_name} has no llama.cpp {arch.gguf} name; use llama.cpp's convert_hf_to_gguf.py")
    assert isinstance(found[0], gguf.MODEL_TENSOR)
    return found[1]
