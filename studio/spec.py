"""The job spec: the one contract between the web UI, the CLI and the child processes.

A spec is a YAML file of nested sections. Each field's `help` metadata is the only help text: the CLI
and the web UI both show it. Unknown keys and bad values raise `SpecError`, which names the field.

    spec = load("examples/identity_lora.yaml", ["train.max_steps=10"])
    dump(spec, "runs/x/spec.yaml")
"""
from __future__ import annotations

import dataclasses
import difflib
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

import yaml

from studio.spec_stages import STAGES, DpoSpec, GrpoSpec, KtoSpec, RmSpec
from studio.spec_stages import validate as _validate_stage


class SpecError(ValueError):
    """A user's mistake in a spec: the message names the field and what to do."""


def _f(default, help: str, choices=None, **kw):
    meta = {"help": help}
    if choices is not None:
        meta["choices"] = list(choices)
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda d=default: type(d)(d), metadata=meta, **kw)
    return field(default=default, metadata=meta, **kw)


def _sub(cls, help: str):
    return field(default_factory=cls, metadata={"help": help})


FINETUNING_TYPES = ["lora", "full", "freeze", "adalora", "ia3", "prefix", "prompt", "ptuning", "ptuning_v2"]
SCHEDULERS = ["constant", "constant_with_warmup", "linear", "cosine", "cosine_with_restarts", "polynomial"]
OPTIMIZERS = ["adamw_torch", "adamw_torch_fused", "adamw_8bit", "paged_adamw_8bit", "adafactor", "sgd"]
DEEPSPEED_PRESETS = ["z0", "z2", "z2_offload", "z3", "z3_offload"]


@dataclass
class ModelSpec:
    name_or_path: str = _f("default", "Base model: `default` (the embedded SmolLM2-135M-Instruct), a local folder, or a hub id.")
    adapter: Optional[str] = _f(None, "A trained adapter folder or run folder to load on top of the base model.")
    template: str = _f("auto", "Prompt template: `auto` uses the tokenizer's chat template; built-ins: alpaca, vicuna, chatml, default.")
    quantization_bit: Optional[int] = _f(None, "Load the base model in 4 or 8 bits with bitsandbytes (QLoRA). Empty: no quantization.", choices=[None, 4, 8])
    quantization_type: str = _f("nf4", "4-bit data type: nf4 or fp4.", choices=["nf4", "fp4"])
    double_quantization: bool = _f(True, "Quantize the 4-bit quantization constants too (saves ~0.4 bit per weight).")
    trust_remote_code: bool = _f(False, "Allow model code from the model folder to run (only for models you trust).")


@dataclass
class DataSpec:
    dataset_dir: str = _f("data", "Folder that holds dataset_info.json and the dataset files.")
    dataset: list = _f(["identity"], "Training datasets: names from dataset_info.json; several are mixed.")
    eval_dataset: list = _f([], "Evaluation datasets (names from dataset_info.json), for eval loss during training or for `studio eval`.")
    val_size: float = _f(0.0, "Fraction (0-1) or count (>1) of training examples held out for eval loss.")
    max_samples: Optional[int] = _f(None, "Use at most this many examples from each dataset. Empty: all.")
    cutoff_len: int = _f(1024, "Maximum tokens per example; longer examples are cut (prompt first, then answer).")
    packing: bool = _f(False, "Pack several examples into one row (they cannot attend to each other) instead of padding each batch.")
    train_on_prompt: bool = _f(False, "Compute the loss on prompt tokens too, not only on assistant answers.")
    mask_history: bool = _f(False, "Compute the loss on the last assistant turn only (earlier turns are context).")
    seed_shuffle: bool = _f(True, "Shuffle the training examples (with train.seed).")


@dataclass
class LoraSpec:
    rank: int = _f(8, "LoRA rank r: the size of the low-rank update.")
    alpha: int = _f(16, "LoRA alpha: the update is scaled by alpha / rank (alpha / sqrt(rank) with rslora).")
    dropout: float = _f(0.0, "Dropout on the LoRA input.")
    target: Union[str, list] = _f("all-linear", "Modules that get LoRA, AdaLoRA or IA3: `all-linear` (for IA3: k_proj, v_proj, down_proj) or a list of module names (q_proj, v_proj, ...).")
    dora: bool = _f(False, "DoRA: weight-decomposed LoRA (a learned magnitude per output feature).")
    rslora: bool = _f(False, "rsLoRA: scale by alpha / sqrt(rank), stable at high ranks.")
    pissa: bool = _f(False, "PiSSA initialisation: start from the principal singular vectors of each weight.")
    loraplus_lr_ratio: Optional[float] = _f(None, "LoRA+: learning rate of B = this ratio x learning rate of A (16 is typical). Empty: off.")
    layers: Optional[list] = _f(None, "Only these layer indices get LoRA (LoRA-drop: spend adapters where they help). Empty: all layers.")
    modules_to_save: Optional[list] = _f(None, "Extra modules trained in full and saved with the adapter (e.g. lm_head, embed_tokens).")


@dataclass
class FreezeSpec:
    trainable_layers: int = _f(2, "Freeze tuning: train the last N decoder layers (negative: the first N).")
    trainable_modules: Optional[list] = _f(None, "Freeze tuning: train only parameters whose name contains one of these (e.g. mlp, self_attn). Empty: whole layers.")
    extra_modules: Optional[list] = _f(None, "Freeze tuning: also train these named modules (e.g. lm_head, norm).")


@dataclass
class PromptSpec:
    num_virtual_tokens: int = _f(16, "Prompt, prefix, P-tuning: number of virtual tokens learned.")
    encoder_hidden_size: int = _f(128, "P-tuning / prefix projection: hidden size of the prompt encoder.")
    init_text: Optional[str] = _f(None, "Prompt tuning: initialise the virtual tokens from this text. Empty: random.")


@dataclass
class AdaLoraSpec:
    init_rank: int = _f(12, "AdaLoRA: starting rank of every adapted matrix.")
    target_rank: int = _f(4, "AdaLoRA: average rank kept after pruning.")
    tinit: int = _f(0, "AdaLoRA: steps of warm-up before rank pruning starts.")
    tfinal: int = _f(0, "AdaLoRA: steps at the end with the final ranks fixed.")
    delta_t: int = _f(1, "AdaLoRA: steps between two rank updates.")


@dataclass
class MethodSpec:
    stage: str = _f("sft", "Training stage: sft (instruction tuning on chats), pt (continued pretraining on plain text), dpo "
                           "(preference pairs; also ORPO, SimPO, IPO), kto (answers labelled good or bad), rm (a reward model "
                           "on preference pairs) or grpo (reinforcement learning with reward functions).", choices=STAGES)
    finetuning_type: str = _f("lora", "What is trained: lora, full, freeze, adalora, ia3, prefix, prompt, ptuning, ptuning_v2.", choices=FINETUNING_TYPES)
    lora: LoraSpec = _sub(LoraSpec, "LoRA options (also used by QLoRA).")
    freeze: FreezeSpec = _sub(FreezeSpec, "Freeze-tuning options.")
    prompt: PromptSpec = _sub(PromptSpec, "Prompt-style method options (prefix, prompt, ptuning, ptuning_v2).")
    adalora: AdaLoraSpec = _sub(AdaLoraSpec, "AdaLoRA options.")
    dpo: DpoSpec = _sub(DpoSpec, "Stage dpo: preference loss and reference model.")
    kto: KtoSpec = _sub(KtoSpec, "Stage kto: KTO loss and reference model.")
    rm: RmSpec = _sub(RmSpec, "Stage rm: reward-model options.")
    grpo: GrpoSpec = _sub(GrpoSpec, "Stage grpo: reward functions and generation.")


@dataclass
class TrainSpec:
    learning_rate: float = _f(2.0e-4, "Peak learning rate.")
    num_train_epochs: float = _f(3, "Passes over the training data (ignored when max_steps > 0).")
    max_steps: int = _f(-1, "Stop after this many optimizer steps; -1 trains for num_train_epochs.")
    per_device_train_batch_size: int = _f(4, "Examples (or packed rows) per device per micro-batch.")
    gradient_accumulation_steps: int = _f(2, "Micro-batches summed before each optimizer step.")
    lr_scheduler_type: str = _f("cosine", "Learning-rate schedule after warm-up.", choices=SCHEDULERS)
    warmup_ratio: float = _f(0.0, "Fraction of the steps spent warming up the learning rate.")
    warmup_steps: int = _f(0, "Warm-up steps (overrides warmup_ratio when > 0).")
    weight_decay: float = _f(0.0, "Decoupled weight decay.")
    max_grad_norm: float = _f(1.0, "Clip the gradient norm to this value (0: no clipping).")
    optim: str = _f("adamw_torch", "Optimizer.", choices=OPTIMIZERS)
    compute_dtype: str = _f("auto", "Precision of the computation: auto (bf16 on GPUs that have it, else fp32), bf16, fp16, fp32.", choices=["auto", "bf16", "fp16", "fp32"])
    gradient_checkpointing: bool = _f(False, "Recompute activations in the backward pass: less memory, ~30% slower.")
    neftune_alpha: Optional[float] = _f(None, "NEFTune: noise added to embeddings during training (5 is typical). Empty: off.")
    logging_steps: int = _f(1, "Write a loss point every this many steps.")
    save_steps: int = _f(100, "Save a checkpoint every this many steps.")
    save_total_limit: Optional[int] = _f(3, "Keep at most this many checkpoints (oldest deleted). Empty: keep all.")
    eval_steps: Optional[int] = _f(None, "Compute eval loss every this many steps (needs eval_dataset or val_size). Empty: at the end only.")
    seed: int = _f(42, "Random seed for data order and initialisation.")
    resume_from_checkpoint: Optional[str] = _f(None, "`auto`: continue from the last checkpoint in the run folder; or a checkpoint path.")
    report_to: str = _f("none", "Also log to: none, tensorboard, wandb, mlflow, swanlab (offline modes need no network).", choices=["none", "tensorboard", "wandb", "mlflow", "swanlab"])
    report_offline: bool = _f(True, "Keep wandb, mlflow and swanlab logs in the run folder (no network); false: send them to the service your environment configures.")
    num_threads: Optional[int] = _f(None, "CPU threads for torch. Empty: all cores.")


@dataclass
class EvalSpec:
    batch_size: int = _f(8, "Prompts generated together.")
    max_new_tokens: int = _f(128, "Longest answer generated.")
    do_sample: bool = _f(False, "Sample instead of greedy decoding.")
    temperature: float = _f(0.7, "Sampling temperature.")
    top_p: float = _f(0.9, "Nucleus sampling: keep the smallest token set with this probability.")
    top_k: int = _f(50, "Sample among the k most likely tokens.")
    seed: int = _f(42, "Seed for sampling.")
    compare: list = _f([], "Also evaluate these adapters or run folders on the same data (`base` for the bare base model).")
    compute_loss: bool = _f(True, "Also compute eval loss and perplexity on the references.")


@dataclass
class ExportSpec:
    export_dir: Optional[str] = _f(None, "Folder to write the export to. Empty: OUTPUT_DIR/export.")
    dtype: str = _f("fp16", "Weights dtype of the merged model.", choices=["fp32", "fp16", "bf16"])
    max_shard_size: str = _f("2GB", "Largest safetensors shard (e.g. 500MB, 2GB).")
    gguf: list = _f(["f16"], "GGUF files to write for llama.cpp and Ollama (f16, q8_0, bf16, f32; Llama-family models); empty for none.")
    verify: bool = _f(True, "Reload the export with plain transformers and compare its logits with base + adapter (and the GGUF files in llama.cpp when installed).")
    overwrite: bool = _f(False, "Replace an existing folder that is not an earlier export.")


@dataclass
class LaunchSpec:
    nproc_per_node: int = _f(1, "Processes (GPUs) per node; more than 1 runs torchrun.")
    nnodes: int = _f(1, "Number of machines.")
    node_rank: int = _f(0, "This machine's rank among nnodes.")
    master_addr: str = _f("127.0.0.1", "Address of node 0, reachable from every node.")
    master_port: Optional[int] = _f(None, "Port on node 0. Empty: a free port.")
    devices: Optional[str] = _f(None, "GPUs the job may use, e.g. `0,1` (sets CUDA_VISIBLE_DEVICES). Empty: all; `cpu`: none.")
    deepspeed: Optional[str] = _f(None, "DeepSpeed: a preset (z0, z2, z2_offload, z3, z3_offload) or a JSON config path. Empty: off.")


@dataclass
class JobSpec:
    task: str = _f("train", "What the job does: train, eval or export.", choices=["train", "eval", "export"])
    output_dir: str = _f("runs/identity_lora", "The run folder: the spec, events, log and results go here.")
    model: ModelSpec = _sub(ModelSpec, "Which model to start from.")
    data: DataSpec = _sub(DataSpec, "Which data, and how it becomes token batches.")
    method: MethodSpec = _sub(MethodSpec, "What is trained and how.")
    train: TrainSpec = _sub(TrainSpec, "Optimisation and checkpointing.")
    eval: EvalSpec = _sub(EvalSpec, "Generation and scoring (task eval).")
    export: ExportSpec = _sub(ExportSpec, "Merging and conversion (task export).")
    launch: LaunchSpec = _sub(LaunchSpec, "Processes, devices and DeepSpeed.")

    def __post_init__(self):
        validate(self)


# --- reading and writing ------------------------------------------------------------------------------


def _is_section(tp) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def _hints(cls) -> dict:
    return typing.get_type_hints(cls)


def _coerce(value, tp, name: str):
    """Check `value` against the annotation `tp`; convert what is unambiguous (int -> float, str -> list)."""
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(value, a, name)
            except SpecError as e:
                errors.append(str(e))
        raise SpecError(errors[0] if errors else f"{name}: bad value {value!r}")
    if tp is Any:
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise SpecError(f"{name}: expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise SpecError(f"{name}: expected a whole number, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        raise SpecError(f"{name}: expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        raise SpecError(f"{name}: expected text, got {value!r}")
    if tp is list or origin is list:
        if isinstance(value, str):
            return [v.strip() for v in value.split(",") if v.strip()]
        if isinstance(value, (list, tuple)):
            return list(value)
        raise SpecError(f"{name}: expected a list, got {value!r}")
    if tp is dict or origin is dict:
        if isinstance(value, dict):
            return value
        raise SpecError(f"{name}: expected a mapping, got {value!r}")
    return value


def from_dict(cls, data: dict | None, prefix: str = ""):
    """Build section `cls` from a nested dict; unknown keys and bad values raise SpecError naming the field."""
    data = data or {}
    if not isinstance(data, dict):
        raise SpecError(f"{prefix.rstrip('.') or 'spec'}: expected a mapping of fields, got {data!r}")
    hints = _hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in data.items():
        full = prefix + str(key)
        if key not in names:
            close = difflib.get_close_matches(str(key), names, n=3)
            hint = f" Did you mean: {', '.join(prefix + c for c in close)}?" if close else f" Known fields: {', '.join(names)}."
            raise SpecError(f"unknown key `{full}`.{hint}")
        tp = hints[key]
        if _is_section(tp):
            kwargs[key] = from_dict(tp, value, full + ".")
        else:
            kwargs[key] = _coerce(value, tp, full)
    return cls(**kwargs)


def to_dict(spec) -> dict:
    return dataclasses.asdict(spec)


def parse_overrides(overrides: list[str]) -> dict:
    """`["train.max_steps=10", "data.dataset=[a,b]"]` -> nested dict (values parsed as YAML)."""
    out: dict = {}
    for item in overrides or []:
        if "=" not in item:
            raise SpecError(f"override `{item}`: expected key.sub=value, e.g. train.max_steps=10")
        key, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError:
            value = raw
        node = out
        parts = key.strip().split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise SpecError(f"override `{item}`: `{p}` is not a section")
        node[parts[-1]] = value
    return out


def merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for k, v in extra.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def read_yaml(path: str | Path) -> dict:
    p = Path(path)
    if not p.is_file():
        raise SpecError(f"spec file not found: {p}")
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise SpecError(f"{p}:{where} is not valid YAML: {getattr(e, 'problem', e)}") from None
    if not isinstance(data, dict):
        raise SpecError(f"{p}: expected a mapping of sections (task, model, data, ...) at the top")
    return data


def load(path: str | Path | None = None, overrides: list[str] | None = None, base: dict | None = None) -> JobSpec:
    """Read a spec file (or start from defaults) and apply `key.sub=value` overrides."""
    data = read_yaml(path) if path else {}
    if base:
        data = merge(base, data)
    data = merge(data, parse_overrides(overrides or []))
    try:
        return from_dict(JobSpec, data)
    except SpecError as e:
        if path:
            raise SpecError(f"{path}: {e}") from None
        raise


def dumps(spec: JobSpec) -> str:
    return yaml.safe_dump(to_dict(spec), sort_keys=False, allow_unicode=True)


def dump(spec: JobSpec, path: str | Path) -> Path:
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(f".{p.name}.{os.getpid()}.tmp")  # one per writer: nodes of a job may share the folder
    tmp.write_text(dumps(spec), encoding="utf-8")
    tmp.replace(p)
    return p


def field_help(dotted: str) -> str:
    """The help text of a field, e.g. field_help('train.learning_rate')."""
    return field_info(dotted)["help"]


def field_info(dotted: str) -> dict:
    cls, f = JobSpec, None
    for part in dotted.split("."):
        f = next((x for x in dataclasses.fields(cls) if x.name == part), None)
        if f is None:
            raise KeyError(dotted)
        cls = _hints(cls)[part]
    return {"help": f.metadata.get("help", ""), "choices": f.metadata.get("choices"), "default": _default_of(dotted)}


def _default_of(dotted: str):
    obj = JobSpec()
    for part in dotted.split("."):
        obj = getattr(obj, part)
    return obj


def get(spec: JobSpec, dotted: str):
    obj = spec
    for part in dotted.split("."):
        obj = getattr(obj, part)
    return obj


def flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


# --- validation -----------------------------------------------------------------------------------------


def _check_choices(section, prefix: str):
    for f in dataclasses.fields(section):
        value = getattr(section, f.name)
        if dataclasses.is_dataclass(value):
            _check_choices(value, f"{prefix}{f.name}.")
            continue
        choices = f.metadata.get("choices")
        if choices and value not in choices:
            allowed = ", ".join("null" if c is None else str(c) for c in choices)
            raise SpecError(f"{prefix}{f.name}: `{value}` is not allowed; choose one of: {allowed}")


def validate(spec: JobSpec) -> JobSpec:
    """Check values and combinations; raise SpecError naming the fields to change."""
    _check_choices(spec, "")
    d, m, t, mo, la = spec.data, spec.method, spec.train, spec.model, spec.launch
    if not spec.output_dir:
        raise SpecError("output_dir: give a run folder, e.g. runs/my_run")
    if spec.task == "train" and not d.dataset:
        raise SpecError("data.dataset: name at least one dataset from dataset_info.json")
    if d.cutoff_len < 8:
        raise SpecError(f"data.cutoff_len: {d.cutoff_len} is too short; use at least 8 (1024 is typical)")
    if d.val_size < 0:
        raise SpecError("data.val_size: must be 0 or more")
    if d.max_samples is not None and d.max_samples < 1:
        raise SpecError("data.max_samples: must be at least 1, or empty for all")
    if t.learning_rate <= 0:
        raise SpecError("train.learning_rate: must be greater than 0")
    if t.max_steps == 0 or t.max_steps < -1:
        raise SpecError("train.max_steps: use -1 (train num_train_epochs) or a positive number")
    for name in ("per_device_train_batch_size", "gradient_accumulation_steps", "logging_steps", "save_steps"):
        if getattr(t, name) < 1:
            raise SpecError(f"train.{name}: must be at least 1")
    if not 0 <= t.warmup_ratio < 1:
        raise SpecError("train.warmup_ratio: must be in [0, 1)")
    _validate_method(spec)
    _validate_stage(spec)
    if mo.quantization_bit is not None and m.finetuning_type not in ("lora", "adalora", "ia3"):
        raise SpecError(
            f"model.quantization_bit={mo.quantization_bit} cannot be used with method.finetuning_type="
            f"{m.finetuning_type}: quantized weights cannot be trained directly. Use finetuning_type lora (QLoRA), "
            "or set model.quantization_bit to null."
        )
    if la.nproc_per_node < 1 or la.nnodes < 1:
        raise SpecError("launch.nproc_per_node and launch.nnodes: must be at least 1")
    if not 0 <= la.node_rank < la.nnodes:
        raise SpecError(f"launch.node_rank: must be between 0 and nnodes-1 ({la.nnodes - 1})")
    if la.devices and la.devices != "cpu":
        gpus = [g.strip() for g in la.devices.split(",")]
        if not all(g.isdigit() or g.startswith(("GPU-", "MIG-")) for g in gpus):
            raise SpecError(f"launch.devices: `{la.devices}` is not `cpu` or a list of GPU numbers like `0,1` (as nvidia-smi shows them)")
        if la.nproc_per_node > len(gpus):
            raise SpecError(f"launch.nproc_per_node={la.nproc_per_node} but launch.devices lists {len(gpus)} GPU(s): "
                            "use at most one process per GPU, or list more GPUs")
    if la.deepspeed and la.deepspeed not in DEEPSPEED_PRESETS and not la.deepspeed.endswith(".json"):
        raise SpecError(f"launch.deepspeed: `{la.deepspeed}` is neither a preset ({', '.join(DEEPSPEED_PRESETS)}) nor a .json path")
    if la.deepspeed and mo.quantization_bit is not None and la.deepspeed.startswith("z3"):
        raise SpecError("launch.deepspeed z3 with model.quantization_bit: ZeRO-3 cannot shard bitsandbytes weights; use z2")
    ex = spec.export
    bad = [q for q in ex.gguf if q not in ("f32", "f16", "bf16", "q8_0")]
    if bad:
        raise SpecError(f"export.gguf: {', '.join(map(str, bad))} not known; choose from f16, q8_0, bf16, f32 (or an empty list)")
    import re as _re
    if not _re.fullmatch(r"\s*\d+(\.\d+)?\s*[KMGT]i?B\s*", str(ex.max_shard_size), _re.I):
        raise SpecError(f"export.max_shard_size: `{ex.max_shard_size}` is not a size like 500MB or 2GB")
    return spec


PROMPT_STYLE = ("prefix", "prompt", "ptuning", "ptuning_v2")


def _validate_method(spec: JobSpec) -> None:
    """Method and training options, and the combinations that cannot work (each message names the fields)."""
    m, t, mo, d, lo = spec.method, spec.train, spec.model, spec.data, spec.method.lora
    ft = m.finetuning_type
    if lo.rank < 1:
        raise SpecError("method.lora.rank: must be at least 1")
    if lo.alpha <= 0:
        raise SpecError("method.lora.alpha: must be greater than 0 (twice the rank is typical)")
    if not 0 <= lo.dropout < 1:
        raise SpecError("method.lora.dropout: must be in [0, 1)")
    if lo.loraplus_lr_ratio is not None and lo.loraplus_lr_ratio <= 0:
        raise SpecError("method.lora.loraplus_lr_ratio: must be greater than 0 (16 is typical), or empty for off")
    if lo.layers is not None and not all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in lo.layers):
        raise SpecError(f"method.lora.layers: expected layer indices (whole numbers from 0), got {lo.layers}")
    lora_only = {"dora": lo.dora, "pissa": lo.pissa, "loraplus_lr_ratio": lo.loraplus_lr_ratio, "layers": lo.layers,
                 "modules_to_save": lo.modules_to_save}
    for name, on in lora_only.items():
        if on and ft != "lora":
            raise SpecError(f"method.lora.{name} applies to method.finetuning_type=lora only (got {ft}); "
                            f"clear method.lora.{name} or choose lora")
    if lo.pissa and mo.quantization_bit is not None:
        raise SpecError("method.lora.pissa with model.quantization_bit: PiSSA needs full-precision weights; turn one off")
    if lo.pissa and lo.dora:
        raise SpecError("method.lora.pissa with method.lora.dora: choose one of them")
    if mo.quantization_bit is not None and ft not in ("lora", "adalora", "ia3"):
        raise SpecError(
            f"model.quantization_bit={mo.quantization_bit} cannot be used with method.finetuning_type={ft}: quantized "
            "weights cannot be trained directly. Use finetuning_type lora (QLoRA), adalora or ia3, or set model.quantization_bit to null."
        )
    if ft in PROMPT_STYLE and d.packing:
        raise SpecError(f"data.packing with method.finetuning_type={ft}: virtual tokens are added in front of each "
                        "example, so examples cannot be packed into one row; set data.packing=false")
    if ft in ("prefix", "ptuning_v2") and t.gradient_checkpointing:
        raise SpecError(f"train.gradient_checkpointing with method.finetuning_type={ft}: the learned prefixes are passed as "
                        "cached keys and values, which checkpointed layers drop; set train.gradient_checkpointing=false")
    if ft == "freeze" and m.freeze.trainable_layers == 0:
        raise SpecError("method.freeze.trainable_layers: 0 trains nothing; use N > 0 (last N layers) or -N (first N)")
    p = m.prompt
    if p.num_virtual_tokens < 1:
        raise SpecError("method.prompt.num_virtual_tokens: must be at least 1")
    if p.encoder_hidden_size < 1:
        raise SpecError("method.prompt.encoder_hidden_size: must be at least 1")
    if p.init_text and ft != "prompt":
        raise SpecError(f"method.prompt.init_text applies to method.finetuning_type=prompt only (got {ft}); clear it")
    a = m.adalora
    if not 1 <= a.target_rank <= a.init_rank:
        raise SpecError(f"method.adalora.target_rank ({a.target_rank}) must be between 1 and method.adalora.init_rank ({a.init_rank})")
    if a.tinit < 0 or a.tfinal < 0 or a.delta_t < 1:
        raise SpecError("method.adalora.tinit and tfinal: 0 or more; method.adalora.delta_t: at least 1")
    if ft == "adalora" and t.max_steps > 0 and a.tinit + a.tfinal >= t.max_steps:
        raise SpecError(f"method.adalora.tinit ({a.tinit}) + method.adalora.tfinal ({a.tfinal}) must be fewer than "
                        f"train.max_steps ({t.max_steps}): AdaLoRA needs steps in between to prune ranks")
    if t.warmup_steps < 0:
        raise SpecError("train.warmup_steps: must be 0 or more")
    if t.weight_decay < 0:
        raise SpecError("train.weight_decay: must be 0 or more (0.01-0.1 is typical)")
    if t.max_grad_norm < 0:
        raise SpecError("train.max_grad_norm: must be 0 (no clipping) or more")
    if t.neftune_alpha is not None and t.neftune_alpha <= 0:
        raise SpecError("train.neftune_alpha: must be greater than 0 (5 is typical), or empty for off")
