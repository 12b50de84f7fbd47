"""GGUF files (llama.cpp, Ollama) and an Ollama Modelfile, written from an exported Hugging Face model folder.

    write(model_dir, model_dir / "model-f16.gguf", "f16", chat_template, stop_ids)
    fmt = turn_format(render)            # the chat template as fixed text around each turn, or None
    modelfile("model-f16.gguf", fmt, stops)

Follows llama.cpp's convert_hf_to_gguf.py for Llama, Mistral, Qwen2/Qwen2.5 and Qwen3 (studio/export/arch.py):
hyperparameters under the architecture's name, the GPT-2-style BPE vocabulary (tokens, token types, merges,
special ids, pre-tokenizer name), the chat template, and for `llama` the q/k projection rows permuted into
the rotary layout llama.cpp uses. Tensors are converted and written one at a time, so memory stays near one
tensor. The k-quants (q4_k_m, ...) are made from the f16 file by llama.cpp's own quantizer (export_quant.py).
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from studio.export import arch as export_arch
from studio.export.arch import Unsupported

TYPES = ["f32", "f16", "bf16", "q8_0"]
LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                r"|\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN2_SPLIT = LLAMA3_SPLIT.replace(r"\p{N}{1,3}", r"\p{N}")  # Qwen2, Qwen2.5 and Qwen3: one digit per token




def unsupported(model_dir: str | Path) -> str | None:
    """Why `model_dir` cannot become GGUF, or None when it can."""
    try:
        _check(json.loads((Path(model_dir) / "config.json").read_text()), Path(model_dir))
    except Unsupported as e:
        return str(e)
    return None


def _check(cfg: dict, model_dir: Path) -> str:
    export_arch.find(cfg)
    rope = _rope(cfg)
    if rope.get("rope_type", "default") not in ("default", "linear", "llama3"):
        raise Unsupported(f"GGUF: rope type `{rope.get('rope_type')}` is not handled here; use llama.cpp's convert_hf_to_gguf.py")
    return _pre_name(model_dir)


def _rope(cfg: dict) -> dict:
    return cfg.get("rope_parameters") or cfg.get("rope_scaling") or {"rope_theta": cfg.get("rope_theta", 10000.0)}


def _pre_name(model_dir: Path) -> str:
    """llama.cpp's name for the tokenizer's pre-tokenizer (how text is split before BPE)."""
    path = model_dir / "tokenizer.json"
    if not path.exists():
        raise Unsupported("GGUF: the tokenizer has no tokenizer.json; only byte-level BPE tokenizers are converted here")
    tj = json.loads(path.read_text(encoding="utf-8"))
    pre = tj.get("pre_tokenizer") or {}
    steps = pre.get("pretokenizers", []) if pre.get("type") == "Sequence" else [pre]
    kinds = [s.get("type") for s in steps]
    if tj.get("model", {}).get("type") == "BPE" and kinds and kinds[-1] == "ByteLevel":
        if kinds == ["ByteLevel"] and steps[0].get("use_regex", True):
            return "gpt-2"
        if kinds == ["Digits", "ByteLevel"] and steps[0].get("individual_digits") and steps[1].get("use_regex", True):
            return "smollm"
        if kinds == ["Split", "ByteLevel"] and (steps[0].get("pattern") or {}).get("Regex") == LLAMA3_SPLIT:
            return "llama-bpe"
        if kinds == ["Split", "ByteLevel"] and (steps[0].get("pattern") or {}).get("Regex") == QWEN2_SPLIT:
            return "qwen2"
    raise Unsupported(f"GGUF: tokenizer {tj.get('model', {}).get('type')} with pre-tokenizer {kinds} is not one this "
                      "converter knows (byte-level BPE: GPT-2, SmolLM, Llama 3, Qwen2); use llama.cpp's convert_hf_to_gguf.py")


def _permute(w, n_head: int):
    """HF rotary layout (halves) -> llama.cpp's (interleaved pairs), per head."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _rope_freqs(cfg: dict, rope: dict, head_dim: int):
    """Llama 3 rope scaling as a per-frequency factor tensor (what llama.cpp reads as rope_freqs)."""
    import numpy as np

    base = rope.get("rope_theta", 10000.0)
    freqs = 1.0 / (base ** (np.arange(0, head_dim, 2, dtype=np.float32) / head_dim))
    factor, low, high = rope.get("factor", 8.0), rope.get("low_freq_factor", 1.0), rope.get("high_freq_factor", 4.0)
    old = rope.get("original_max_position_embeddings", 8192)
    out = []
    for f in freqs:
        wavelen = 2 * math.pi / f
        if wavelen < old / high:
            out.append(1.0)
        elif wavelen > old / low:
            out.append(factor)
        else:
            smooth = (old / wavelen - low) / (high - low)
            out.append(1 / ((1 - smooth) / factor + smooth))
    return np.array(out, dtype=np.float32)


class _Tensor:
    """One tensor of a safetensors file, read when called (float32 numpy), with llama.cpp's q/k permutation
    when the architecture needs it (n_head 0: none)."""

    def __init__(self, file: Path, name: str, n_head: int, n_kv: int):
        self.file, self.name, self.n_head, self.n_kv = file, name, n_head, n_kv

    def shape(self) -> list[int]:
        from safetensors import safe_open

        with safe_open(str(self.file), framework="pt") as f:
            return list(f.get_slice(self.name).get_shape())

    def __call__(self):
        from safetensors import safe_open

        with safe_open(str(self.file), framework="pt") as f:
            x = f.get_tensor(self.name).float().numpy()
        if not self.n_head:
            return x
        if self.name.endswith(("q_proj.weight", "q_proj.bias")):
            x = _permute(x, self.n_head)
        elif self.name.endswith(("k_proj.weight", "k_proj.bias")):
            x = _permute(x, self.n_kv)
        return x


class _Array:
    def __init__(self, x):
        self.x = x

    def shape(self) -> list[int]:
        return list(self.x.shape)

    def __call__(self):
        return self.x


def _tensors(model_dir: Path, n_head: int, n_kv: int) -> list[_Tensor]:
    from safetensors import safe_open

    files = sorted(model_dir.glob("*.safetensors"))
    if not files:
        raise Unsupported(f"GGUF: no .safetensors files in {model_dir}")
    out = []
    for file in files:
        with safe_open(str(file), framework="pt") as f:
            out += [_Tensor(file, name, n_head, n_kv) for name in f.keys()]
    return out


def _vocab(w, model_dir: Path, cfg: dict, pre: str, chat_template: str | None, stop_ids: list[int]) -> None:
    import gguf
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    n_vocab = cfg["vocab_size"]
    if len(tok) > n_vocab:
        raise Unsupported(f"GGUF: the tokenizer has {len(tok)} tokens but the model only {n_vocab} embeddings")
    reverse = {i: t for t, i in tok.get_vocab().items()}
    added = tok.added_tokens_decoder
    tokens, types = [], []
    for i in range(n_vocab):
        if i not in reverse:
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
        elif i in added:
            tokens.append(reverse[i])
            types.append(gguf.TokenType.CONTROL if added[i].special else gguf.TokenType.USER_DEFINED)
        else:
            tokens.append(reverse[i])
            types.append(gguf.TokenType.NORMAL)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre(pre)
    w.add_token_list(tokens)
    w.add_token_types(types)
    special = gguf.SpecialVocab(model_dir, load_merges=True, n_vocab=n_vocab)
    special.chat_template, special.add_special_token = None, {}
    special.add_to_gguf(w, quiet=True)
    plain = tok("a", add_special_tokens=False).input_ids
    full = tok("a").input_ids
    w.add_add_bos_token(tok.bos_token_id is not None and full[:1] == [tok.bos_token_id] and plain[:1] != full[:1])
    w.add_add_eos_token(tok.eos_token_id is not None and full[-1:] == [tok.eos_token_id] and plain[-1:] != full[-1:])
    others = [t for t in stop_ids if t != tok.eos_token_id]
    if others:  # an end-of-turn token that is not eos (e.g. a chatml template on a base model): llama.cpp stops there too
        w.add_eot_token_id(others[0])
    if chat_template:
        w.add_chat_template(chat_template)


def write(model_dir: str | Path, out: str | Path, qtype: str, chat_template: str | None, stop_ids: list[int],
          name: str = "model", on_tensor: Callable[[int, int], None] | None = None) -> Path:
    """Write `model_dir` as one GGUF file of type `qtype` (f32, f16, bf16, q8_0). Raises Unsupported."""
    import gguf
    import numpy as np

    model_dir, out = Path(model_dir), Path(out)
    cfg = json.loads((model_dir / "config.json").read_text())
    pre = _check(cfg, model_dir)
    arch = export_arch.find(cfg)
    q = {"f32": (gguf.GGMLQuantizationType.F32, gguf.LlamaFileType.ALL_F32),
         "f16": (gguf.GGMLQuantizationType.F16, gguf.LlamaFileType.MOSTLY_F16),
         "bf16": (gguf.GGMLQuantizationType.BF16, gguf.LlamaFileType.MOSTLY_BF16),
         "q8_0": (gguf.GGMLQuantizationType.Q8_0, gguf.LlamaFileType.MOSTLY_Q8_0)}[qtype]
    n_head, n_layer, hidden = cfg["num_attention_heads"], cfg["num_hidden_layers"], cfg["hidden_size"]
    n_kv = cfg.get("num_key_value_heads") or n_head
    head_dim = cfg.get("head_dim") or hidden // n_head
    rope = _rope(cfg)

    w = gguf.GGUFWriter(out, arch.gguf)
    w.add_name(name)
    w.add_context_length(cfg["max_position_embeddings"])
    w.add_embedding_length(hidden)
    w.add_block_count(n_layer)
    w.add_feed_forward_length(cfg["intermediate_size"])
    w.add_head_count(n_head)
    w.add_head_count_kv(n_kv)
    w.add_layer_norm_rms_eps(cfg["rms_norm_eps"])
    w.add_rope_freq_base(float(rope.get("rope_theta", 10000.0)))
    w.add_rope_dimension_count(head_dim)
    w.add_key_length(head_dim)
    w.add_value_length(head_dim)
    w.add_vocab_size(cfg["vocab_size"])
    if rope.get("rope_type") == "linear":
        w.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        w.add_rope_scaling_factor(float(rope["factor"]))
    w.add_file_type(q[1])
    w.add_quantization_version(gguf.GGML_QUANT_VERSION)
    _vocab(w, model_dir, cfg, pre, chat_template, stop_ids)

    names = arch.tensor_names(n_layer)
    plan = []  # (gguf name, tensor)
    if rope.get("rope_type") == "llama3":
        plan.append(("rope_freqs.weight", _Array(_rope_freqs(cfg, rope, head_dim))))
    for t in _tensors(model_dir, n_head if arch.permute_qk else 0, n_kv):
        if t.name.endswith("rotary_emb.inv_freq") or (t.name == "lm_head.weight" and cfg.get("tie_word_embeddings")):
            continue
        plan.append((export_arch.tensor_name(arch, names, t.name), t))
    types = []
    for g_name, t in plan:
        shape = t.shape()
        ttype = _tensor_type(shape, q[0])
        types.append(ttype)
        nbytes = _nbytes(shape, ttype)
        if ttype in (gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType.F16):
            w.add_tensor_info(g_name, shape, np.dtype(np.float32 if ttype == gguf.GGMLQuantizationType.F32 else np.float16), nbytes)
        else:
            w.add_tensor_info(g_name, gguf.quant_shape_to_byte_shape(shape, ttype), np.dtype(np.uint8), nbytes, raw_dtype=ttype)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    for i, ((g_name, t), ttype) in enumerate(zip(plan, types)):
        w.write_tensor_data(gguf.quants.quantize(t(), ttype))
        if on_tensor:
            on_tensor(i + 1, len(plan))
    w.close()
    return out


def _tensor_type(shape: list[int], want):
    import gguf

    T = gguf.GGMLQuantizationType
    if len(shape) == 1:
        return T.F32  # norms and biases stay f32, as llama.cpp's converter keeps them
    if want == T.Q8_0 and shape[-1] % gguf.GGML_QUANT_SIZES[T.Q8_0][0] != 0:
        return T.F16
    return want


def _nbytes(shape: list[int], ttype) -> int:
    import gguf

    block, size = gguf.GGML_QUANT_SIZES[ttype]
    return math.prod(shape[:-1]) * shape[-1] // block * size


# --- Ollama -----------------------------------------------------------------------------------------------


@dataclass
class TurnFormat:
    """A chat template as fixed text around each turn (what an Ollama Go template can express)."""
    sys_pre: str
    sys_post: str
    user_pre: str
    user_post: str
    asst_pre: str
    asst_post: str
    generation: str
    default_system: str | None

    def render(self, messages: list[dict], add_generation_prompt: bool = True) -> str:
        msgs = list(messages)
        out = ""
        if msgs and msgs[0]["role"] == "system":
            out += self.sys_pre + msgs.pop(0)["content"] + self.sys_post
        elif self.default_system is not None:
            out += self.sys_pre + self.default_system + self.sys_post
        for m in msgs:
            if m["role"] == "assistant":
                out += self.asst_pre + m["content"] + self.asst_post
            else:
                out += self.user_pre + m["content"] + self.user_post
        if add_generation_prompt and msgs and msgs[-1]["role"] != "assistant":
            out += self.generation
        return out


SAMPLES = [
    [{"role": "user", "content": "Who are you?"}],
    [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": "Name a colour."}],
    [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello! How can I help?"},
     {"role": "user", "content": "Tell me a joke."}],
]


def turn_format(render: Callable[[list[dict], bool], str]) -> TurnFormat | None:
    """Read the fixed text around each turn off a chat template by rendering marker conversations.

    `render(messages, add_generation_prompt)` renders with the Jinja template. None when the template
    is not fixed text around turns (then no Ollama TEMPLATE can reproduce it exactly).
    """
    S, U, A, U2 = "SYSMARK7q", "USERMARK7q", "ANSMARK7q", "USERMARK8q"
    try:
        r_full = render([{"role": "system", "content": S}, {"role": "user", "content": U},
                         {"role": "assistant", "content": A}, {"role": "user", "content": U2}], True)
        r_user = render([{"role": "user", "content": U}], False)
        r_gen = render([{"role": "user", "content": U}], True)
        r_ua = render([{"role": "user", "content": U}, {"role": "assistant", "content": A}], False)
        user_post = r_user.split(U, 1)[1]
        asst_post = r_ua.split(A, 1)[1]
        asst_pre = _after(r_ua.split(U, 1)[1].split(A, 1)[0], user_post)
        generation = _after(r_gen.split(U, 1)[1], user_post)
        user_pre = _after(r_full.split(A, 1)[1].split(U2, 1)[0], asst_post)
        sys_pre = r_full.split(S, 1)[0]
        sys_post = _before(r_full.split(S, 1)[1].split(U, 1)[0], user_pre)
        head = _before(r_user.split(U, 1)[0], user_pre)
        default = None
        if head:
            default = _before(_after(head, sys_pre), sys_post)
        fmt = TurnFormat(sys_pre, sys_post, user_pre, user_post, asst_pre, asst_post, generation, default)
    except (ValueError, IndexError, KeyError, TypeError, AttributeError):
        return None
    for msgs in SAMPLES:
        for gen in (True, False):
            if fmt.render(msgs, gen) != render(msgs, gen):
                return None
    return fmt


def _after(text: str, prefix: str) -> str:
    if not text.startswith(prefix):
        raise ValueError("not a prefix")
    return text[len(prefix):]


def _before(text: str, suffix: str) -> str:
    if not text.endswith(suffix):
        raise ValueError("not a suffix")
    return text[: len(text) - len(suffix)] if suffix else text


def _go(text: str) -> str:
    """Literal text inside a Go template (`{{` must be printed by an action)."""
    return text.replace("{{", '{{ "{{" }}')


def go_template(fmt: TurnFormat) -> str:
    """An Ollama TEMPLATE (Go text/template over .Messages) that renders like `fmt`. One line on purpose:
    a `{{-` after literal text would trim the newlines that belong to the template."""
    return ('{{- range $i, $_ := .Messages }}{{ $last := eq (len (slice $.Messages $i)) 1 }}'
            f'{{{{ if eq .Role "system" }}}}{_go(fmt.sys_pre)}{{{{ .Content }}}}{_go(fmt.sys_post)}'
            f'{{{{ else if eq .Role "assistant" }}}}{_go(fmt.asst_pre)}{{{{ .Content }}}}{{{{ if not $last }}}}{_go(fmt.asst_post)}{{{{ end }}}}'
            f'{{{{ else }}}}{_go(fmt.user_pre)}{{{{ .Content }}}}{_go(fmt.user_post)}{{{{ if $last }}}}{_go(fmt.generation)}{{{{ end }}}}'
            '{{ end }}{{ end }}')


def modelfile(gguf_name: str, fmt: TurnFormat, stops: list[str]) -> str:
    """The Ollama Modelfile: FROM the GGUF file, the chat TEMPLATE, the default SYSTEM prompt, stop strings."""
    template = go_template(fmt)
    for text in (template, fmt.default_system or ""):
        if '"""' in text:
            raise Unsupported('Modelfile: the template contains """, which a Modelfile cannot quote')
    lines = [f"FROM ./{gguf_name}", f'TEMPLATE """{template}"""']
    if fmt.default_system is not None:
        lines.append(f'SYSTEM """{fmt.default_system}"""')
    lines += [f"PARAMETER stop {json.dumps(s, ensure_ascii=False)}" for s in stops]
    return "\n".join(lines) + "\n"
