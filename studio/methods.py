"""Fine-tuning methods: spec.method -> a model with the right parameters trainable.

    lora adalora ia3         PEFT adapters on linear layers (QLoRA: lora on a 4/8-bit base)
    prefix ptuning_v2        learned key/value prefixes on every layer (prefix: through an MLP encoder)
    prompt ptuning           learned virtual input tokens (ptuning: through a prompt encoder)
    full                     every weight
    freeze                   the last (or first) N decoder layers, or named modules, and nothing else
"""
from __future__ import annotations

import re

from studio.spec import JobSpec, SpecError

PEFT_TYPES = ("lora", "adalora", "ia3", "prefix", "prompt", "ptuning", "ptuning_v2")
PROMPT_TYPES = ("prefix", "prompt", "ptuning", "ptuning_v2")
MERGEABLE = ("lora", "adalora", "ia3")


def is_peft(spec: JobSpec) -> bool:
    return spec.method.finetuning_type in PEFT_TYPES


def _targets(spec: JobSpec):
    t = spec.method.lora.target
    if isinstance(t, str) and t != "all-linear":
        return [x.strip() for x in t.split(",") if x.strip()]
    return t


def peft_config(spec: JobSpec, model, total_steps: int | None = None):
    import peft

    m = spec.method
    ft = m.finetuning_type
    lo = m.lora
    task = peft.TaskType.CAUSAL_LM
    if ft == "lora":
        return peft.LoraConfig(
            task_type=task, r=lo.rank, lora_alpha=lo.alpha, lora_dropout=lo.dropout, target_modules=_targets(spec),
            use_dora=lo.dora, use_rslora=lo.rslora, init_lora_weights="pissa_niter_4" if lo.pissa else True,
            layers_to_transform=lo.layers or None, modules_to_save=lo.modules_to_save,
        )
    if ft == "adalora":
        a = m.adalora
        return peft.AdaLoraConfig(
            task_type=task, init_r=a.init_rank, target_r=a.target_rank, tinit=a.tinit, tfinal=a.tfinal, deltaT=a.delta_t,
            lora_alpha=lo.alpha, lora_dropout=lo.dropout, target_modules=_targets(spec), total_step=total_steps,
        )
    if ft == "ia3":
        targets = _targets(spec)
        if targets == "all-linear":
            targets = ["k_proj", "v_proj", "down_proj"]
        ff = [t for t in targets if re.search(r"(down|fc2|mlp|ffn|dense_4h)", t)]
        return peft.IA3Config(task_type=task, target_modules=targets, feedforward_modules=ff)
    p = m.prompt
    if ft == "prefix":
        return peft.PrefixTuningConfig(task_type=task, num_virtual_tokens=p.num_virtual_tokens, prefix_projection=True,
                                       encoder_hidden_size=p.encoder_hidden_size)
    if ft == "ptuning_v2":
        return peft.PrefixTuningConfig(task_type=task, num_virtual_tokens=p.num_virtual_tokens, prefix_projection=False)
    if ft == "ptuning":
        return peft.PromptEncoderConfig(task_type=task, num_virtual_tokens=p.num_virtual_tokens,
                                        encoder_hidden_size=p.encoder_hidden_size)
    if ft == "prompt":
        kw = {}
        if p.init_text:
            kw = dict(prompt_tuning_init=peft.PromptTuningInit.TEXT, prompt_tuning_init_text=p.init_text,
                      tokenizer_name_or_path=model.config._name_or_path)
        return peft.PromptTuningConfig(task_type=task, num_virtual_tokens=p.num_virtual_tokens, **kw)
    raise SpecError(f"method.finetuning_type: {ft} is not a PEFT method")


def apply(spec: JobSpec, model, total_steps: int | None = None):
    """Make the right parameters trainable; returns the model to train (a PeftModel for PEFT methods)."""
    ft = spec.method.finetuning_type
    if ft == "full":
        for p in model.parameters():
            p.requires_grad_(True)
        return model
    if ft == "freeze":
        return _freeze(spec, model)
    import peft

    if spec.model.quantization_bit:
        model = peft.prepare_model_for_kbit_training(model, use_gradient_checkpointing=spec.train.gradient_checkpointing)
    if spec.model.adapter:
        from studio.models import find_adapter

        return peft.PeftModel.from_pretrained(model, str(find_adapter(spec.model.adapter)), is_trainable=True)
    return peft.get_peft_model(model, peft_config(spec, model, total_steps))


def _layers(model):
    for name, module in model.named_modules():
        if isinstance(module, __import__("torch").nn.ModuleList) and re.search(r"(^|\.)(layers|h|blocks)$", name):
            return name, len(module)
    raise SpecError("method.finetuning_type=freeze: cannot find the decoder layers of this model; use lora or full")


def _freeze(spec: JobSpec, model):
    f = spec.method.freeze
    prefix, n_layers = _layers(model)
    n = f.trainable_layers
    if n == 0 or abs(n) > n_layers:
        raise SpecError(f"method.freeze.trainable_layers: must be between 1 and {n_layers} (or -1 to -{n_layers}), got {n}")
    ids = range(n_layers - n, n_layers) if n > 0 else range(0, -n)
    layer_prefixes = tuple(f"{prefix}.{i}." for i in ids)
    extra = tuple(f.extra_modules or ())
    found = 0
    for name, p in model.named_parameters():
        train = name.startswith(layer_prefixes) and (not f.trainable_modules or any(k in name for k in f.trainable_modules))
        train = train or any(name.startswith(e) or f".{e}." in f".{name}" for e in extra)
        p.requires_grad_(train)
        found += train
    if not found:
        raise SpecError(f"method.freeze: no parameter matches trainable_modules={f.trainable_modules}; check the names")
    return model


def count_params(model) -> tuple[int, int]:
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return trainable, total


def adalora_callback():
    """AdaLoRA re-allocates ranks between backward and the optimizer step."""
    from transformers import TrainerCallback

    class AdaLoraCallback(TrainerCallback):
        def on_pre_optimizer_step(self, args, state, control, model=None, **kw):
            base = getattr(model, "base_model", None)
            if base is not None and hasattr(base, "update_and_allocate"):
                base.update_and_allocate(state.global_step)

    return AdaLoraCallback()
