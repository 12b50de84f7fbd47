"""Validation of a spec: values and the combinations that cannot work. Every message names the fields to change."""
from __future__ import annotations

import dataclasses
import re

from studio.spec.fields import DEEPSPEED_PRESETS, DENSITY_METHODS, GGUF_TYPES, PROMPT_STYLE, SpecError
from studio.spec.stages import validate as validate_stage


def _check_choices(section, prefix: str, bad):
    for f in dataclasses.fields(section):
        value = getattr(section, f.name)
        if dataclasses.is_dataclass(value):
            _check_choices(value, f"{prefix}{f.name}.", bad)
            continue
        choices = f.metadata.get("choices")
        if choices and value not in choices:
            allowed = ", ".join("null" if c is None else str(c) for c in choices)
            bad(f"{prefix}{f.name}: `{value}` is not allowed; choose one of: {allowed}")


def validate(spec):
    """Check values and combinations; raise one SpecError that lists every problem, each naming the fields to change."""
    problems: list[str] = []
    bad = problems.append
    _check_choices(spec, "", bad)
    d, t, mo, la = spec.data, spec.train, spec.model, spec.launch
    if not spec.output_dir:
        bad("output_dir: give a run folder, e.g. runs/my_run")
    if spec.task == "train" and not d.dataset:
        bad("data.dataset: name at least one dataset from dataset_info.json")
    if d.cutoff_len < 8:
        bad(f"data.cutoff_len: {d.cutoff_len} is too short; use at least 8 (1024 is typical)")
    if d.val_size < 0:
        bad("data.val_size: must be 0 or more")
    if d.max_samples is not None and d.max_samples < 1:
        bad("data.max_samples: must be at least 1, or empty for all")
    if t.learning_rate <= 0:
        bad("train.learning_rate: must be greater than 0")
    if t.max_steps == 0 or t.max_steps < -1:
        bad("train.max_steps: use -1 (train num_train_epochs) or a positive number")
    for name in ("per_device_train_batch_size", "gradient_accumulation_steps", "logging_steps", "save_steps"):
        if getattr(t, name) < 1:
            bad(f"train.{name}: must be at least 1")
    if not 0 <= t.warmup_ratio < 1:
        bad("train.warmup_ratio: must be in [0, 1)")
    _validate_best(spec, bad)
    _validate_method(spec, bad)
    try:
        validate_stage(spec)
    except SpecError as e:
        bad(str(e))
    _validate_generate(spec.generate, bad)
    _validate_eval(spec.eval, bad)
    sv = spec.serve
    if not 1 <= sv.port <= 65535:
        bad(f"serve.port: {sv.port} is not a TCP port (1-65535)")
    if sv.max_batch_size < 1 or sv.max_tokens < 1 or sv.stats_every <= 0 or (sv.num_threads is not None and sv.num_threads < 1):
        bad("serve.max_batch_size, serve.max_tokens and serve.num_threads: at least 1; serve.stats_every: above 0")
    if la.nproc_per_node < 1 or la.nnodes < 1:
        bad("launch.nproc_per_node and launch.nnodes: must be at least 1")
    if not 0 <= la.node_rank < la.nnodes:
        bad(f"launch.node_rank: must be between 0 and nnodes-1 ({la.nnodes - 1})")
    if la.devices and la.devices != "cpu":
        gpus = [g.strip() for g in la.devices.split(",")]
        if not all(g.isdigit() or g.startswith(("GPU-", "MIG-")) for g in gpus):
            bad(f"launch.devices: `{la.devices}` is not `cpu` or a list of GPU numbers like `0,1` (as nvidia-smi shows them)")
        if la.nproc_per_node > len(gpus):
            bad(f"launch.nproc_per_node={la.nproc_per_node} but launch.devices lists {len(gpus)} GPU(s): "
                            "use at most one process per GPU, or list more GPUs")
    if la.deepspeed and la.deepspeed not in DEEPSPEED_PRESETS and not la.deepspeed.endswith(".json"):
        bad(f"launch.deepspeed: `{la.deepspeed}` is neither a preset ({', '.join(DEEPSPEED_PRESETS)}) nor a .json path")
    if la.deepspeed and mo.quantization_bit is not None and la.deepspeed.startswith("z3"):
        bad("launch.deepspeed z3 with model.quantization_bit: ZeRO-3 cannot shard bitsandbytes weights; use z2")
    _validate_merge(spec.merge, spec.task == "merge", bad)
    ex = spec.export
    ex.gguf = [str(q).lower() for q in ex.gguf]
    unknown = [q for q in ex.gguf if q not in GGUF_TYPES]
    if unknown:
        bad(f"export.gguf: {', '.join(map(str, unknown))} not known; choose from {', '.join(GGUF_TYPES)} (or an empty list)")
    if not re.fullmatch(r"\s*\d+(\.\d+)?\s*[KMGT]i?B\s*", str(ex.max_shard_size), re.I):
        bad(f"export.max_shard_size: `{ex.max_shard_size}` is not a size like 500MB or 2GB")
    if problems:
        raise SpecError(problems[0] if len(problems) == 1 else f"{len(problems)} problems:\n" + "\n".join(f"- {p}" for p in problems))
    return spec


def _validate_best(spec, bad) -> None:
    """Best checkpoint and early stopping: both watch evaluations during training."""
    t, d = spec.train, spec.data
    if not (t.load_best_model_at_end or t.early_stopping_patience is not None):
        return
    what = "train.load_best_model_at_end" if t.load_best_model_at_end else "train.early_stopping_patience"
    if spec.method.stage not in ("sft", "pt"):
        bad(f"{what}: works with method.stage sft or pt; clear it for {spec.method.stage}")
    if t.early_stopping_patience is not None and t.early_stopping_patience < 1:
        bad("train.early_stopping_patience: must be at least 1 (evaluations without improvement), or empty for never")
    if not t.eval_steps or t.eval_steps < 1:
        bad(f"{what}: needs train.eval_steps (evaluate every N steps), e.g. train.eval_steps=10")
    elif t.load_best_model_at_end and t.save_steps % t.eval_steps:
        bad(f"train.load_best_model_at_end: train.save_steps={t.save_steps} must be a multiple of train.eval_steps={t.eval_steps} "
            "(a checkpoint is kept only where an evaluation ran)")
    if spec.task == "train" and not (d.val_size > 0 or d.eval_dataset):
        bad(f"{what}: needs eval data: data.val_size (e.g. 0.1) or data.eval_dataset")
    if not t.metric_for_best_model:
        bad("train.metric_for_best_model: name an eval metric, e.g. eval_loss")


def _validate_method(spec, bad) -> None:
    """Method and training options, and the combinations that cannot work (each message names the fields)."""
    m, t, mo, d, lo = spec.method, spec.train, spec.model, spec.data, spec.method.lora
    ft = m.finetuning_type
    if lo.rank < 1:
        bad("method.lora.rank: must be at least 1")
    if lo.alpha <= 0:
        bad("method.lora.alpha: must be greater than 0 (twice the rank is typical)")
    if not 0 <= lo.dropout < 1:
        bad("method.lora.dropout: must be in [0, 1)")
    if lo.loraplus_lr_ratio is not None and lo.loraplus_lr_ratio <= 0:
        bad("method.lora.loraplus_lr_ratio: must be greater than 0 (16 is typical), or empty for off")
    if lo.layers is not None and not all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in lo.layers):
        bad(f"method.lora.layers: expected layer indices (whole numbers from 0), got {lo.layers}")
    lora_only = {"dora": lo.dora, "pissa": lo.pissa, "loraplus_lr_ratio": lo.loraplus_lr_ratio, "layers": lo.layers,
                 "modules_to_save": lo.modules_to_save}
    for name, on in lora_only.items():
        if on and ft != "lora":
            bad(f"method.lora.{name} applies to method.finetuning_type=lora only (got {ft}); "
                            f"clear method.lora.{name} or choose lora")
    if lo.pissa and mo.quantization_bit is not None:
        bad("method.lora.pissa with model.quantization_bit: PiSSA needs full-precision weights; turn one off")
    if lo.pissa and lo.dora:
        bad("method.lora.pissa with method.lora.dora: choose one of them")
    if mo.quantization_bit is not None and ft not in ("lora", "adalora", "ia3"):
        bad(
            f"model.quantization_bit={mo.quantization_bit} cannot be used with method.finetuning_type={ft}: quantized "
            "weights cannot be trained directly. Use finetuning_type lora (QLoRA), adalora or ia3, or set model.quantization_bit to null."
        )
    if ft in PROMPT_STYLE and d.packing:
        bad(f"data.packing with method.finetuning_type={ft}: virtual tokens are added in front of each "
                        "example, so examples cannot be packed into one row; set data.packing=false")
    if ft in ("prefix", "ptuning_v2") and t.gradient_checkpointing:
        bad(f"train.gradient_checkpointing with method.finetuning_type={ft}: the learned prefixes are passed as "
                        "cached keys and values, which checkpointed layers drop; set train.gradient_checkpointing=false")
    if ft == "freeze" and m.freeze.trainable_layers == 0:
        bad("method.freeze.trainable_layers: 0 trains nothing; use N > 0 (last N layers) or -N (first N)")
    p = m.prompt
    if p.num_virtual_tokens < 1:
        bad("method.prompt.num_virtual_tokens: must be at least 1")
    if p.encoder_hidden_size < 1:
        bad("method.prompt.encoder_hidden_size: must be at least 1")
    if p.init_text and ft != "prompt":
        bad(f"method.prompt.init_text applies to method.finetuning_type=prompt only (got {ft}); clear it")
    a = m.adalora
    if not 1 <= a.target_rank <= a.init_rank:
        bad(f"method.adalora.target_rank ({a.target_rank}) must be between 1 and method.adalora.init_rank ({a.init_rank})")
    if a.tinit < 0 or a.tfinal < 0 or a.delta_t < 1:
        bad("method.adalora.tinit and tfinal: 0 or more; method.adalora.delta_t: at least 1")
    if ft == "adalora" and t.max_steps > 0 and a.tinit + a.tfinal >= t.max_steps:
        bad(f"method.adalora.tinit ({a.tinit}) + method.adalora.tfinal ({a.tfinal}) must be fewer than "
                        f"train.max_steps ({t.max_steps}): AdaLoRA needs steps in between to prune ranks")
    if t.warmup_steps < 0:
        bad("train.warmup_steps: must be 0 or more")
    if t.weight_decay < 0:
        bad("train.weight_decay: must be 0 or more (0.01-0.1 is typical)")
    if t.max_grad_norm < 0:
        bad("train.max_grad_norm: must be 0 (no clipping) or more")
    if t.neftune_alpha is not None and t.neftune_alpha <= 0:
        bad("train.neftune_alpha: must be greater than 0 (5 is typical), or empty for off")


def _validate_eval(e, bad) -> None:
    if e.benchmark_batch_size < 1 or e.judge_max_new_tokens < 1:
        bad("eval.benchmark_batch_size and eval.judge_max_new_tokens: must be at least 1")
    if e.num_fewshot is not None and e.num_fewshot < 0:
        bad("eval.num_fewshot: 0 or more, or empty for each task's own")
    if e.benchmark_limit is not None and e.benchmark_limit <= 0:
        bad("eval.benchmark_limit: above 0 (a count, or a fraction below 1), or empty for all")
    if e.judge_retries < 0:
        bad("eval.judge_retries: must be 0 or more")
    if e.judge != "none" and e.judge_model == "endpoint" and not (e.judge_base_url and e.judge_endpoint_model):
        bad("eval.judge_model endpoint: set eval.judge_base_url (e.g. http://127.0.0.1:8000/v1) and eval.judge_endpoint_model")


def _validate_generate(g, bad) -> None:
    for name in ("num_instructions", "num_prompt_instructions", "instructions_per_request", "batch_size", "max_rounds",
                 "max_new_tokens", "concurrency", "min_words", "max_words"):
        if getattr(g, name) < 1:
            bad(f"generate.{name}: must be at least 1")
    if g.retries < 0:
        bad("generate.retries: must be 0 or more")
    if g.min_words > g.max_words:
        bad(f"generate.min_words ({g.min_words}) must not exceed generate.max_words ({g.max_words})")
    if not 0 < g.similarity_threshold <= 1:
        bad("generate.similarity_threshold: must be in (0, 1]; 0.7 is the Alpaca value")
    if g.temperature < 0 or not 0 < g.top_p <= 1:
        bad("generate.temperature: 0 or more; generate.top_p: in (0, 1]")
    if g.timeout <= 0:
        bad("generate.timeout: must be greater than 0 seconds")
    if not re.fullmatch(r"[A-Za-z0-9_.\-]+", g.output_dataset or ""):
        bad(f"generate.output_dataset: `{g.output_dataset}` is not a plain name (letters, digits, _ . -), e.g. my_generated")
    if g.generator == "endpoint" and not (g.base_url and g.endpoint_model):
        bad("generate.generator=endpoint needs generate.base_url (e.g. http://127.0.0.1:8000/v1) and generate.endpoint_model")
    if g.api_key_env and not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", g.api_key_env):
        bad(f"generate.api_key_env: `{g.api_key_env}` is not an environment variable NAME (e.g. OPENAI_API_KEY); never put the key itself in a spec")


def _validate_merge(m, asked: bool, bad) -> None:
    if asked and len(m.adapters) < 2:
        bad("merge.adapters: name two or more adapters (run folders or adapter folders) to merge")
    if m.weights and len(m.weights) != len(m.adapters):
        bad(f"merge.weights: {len(m.weights)} weight(s) for {len(m.adapters)} adapter(s); give one per adapter, or none (1 each)")
    try:
        [float(w) for w in m.weights]
    except (TypeError, ValueError):
        bad(f"merge.weights: {m.weights} are not all numbers")
    if m.method in DENSITY_METHODS and not 0 < m.density <= 1:
        bad(f"merge.density: {m.density} is outside (0, 1]; it is the share of each adapter's values kept (0.5 is typical)")
    if m.svd_rank is not None and m.svd_rank < 1:
        bad("merge.svd_rank: at least 1, or empty for the largest rank merged")
