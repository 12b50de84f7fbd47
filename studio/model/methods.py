"""Fine-tuning methods: spec.method -> a model with the right parameters trainable.

    lora adalora ia3         PEFT adapters on linear layers (QLoRA: lora on a 4/8-bit base)
    prefix ptuning_v2        learned key/value prefixes on every layer (prefix: through an MLP encoder)
    prompt ptuning           learned virtual input tokens (ptuning: through a prompt encoder)
    full                     every weight
    freeze                   the last (or first) N decoder layers, or named modules, and nothing else

Bottleneck adapters (Houlsby) are not offered: PEFT has none, and the maintained implementation (AdapterHub's
`adapters`) requires transformers 4; see docs/methods.md.

The child calls `apply` (trainable parameters), `optimizers` (LoRA+), `callbacks` (AdaLoRA rank allocation),
`setup_reporting` (offline experiment trackers) and `save` (PiSSA); the CLI and the web UI call `preflight`
(packages and hardware, without importing torch) before they start a job.
"""
from __future__ import annotations

import importlib.util
import os
import re
from pathlib import Path

from studio.run import events as ev
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


def _linear_names(model) -> list[str]:
    """What `all-linear` means for a model: the names of its linear layers, the output head left out."""
    import torch

    out = model.get_output_embeddings()
    return sorted({name.rsplit(".", 1)[-1] for name, m in model.named_modules()
                   if isinstance(m, torch.nn.Linear) and m is not out and "." in name})


def peft_config(spec: JobSpec, model, total_steps: int | None = None):
    import peft

    m = spec.method
    ft = m.finetuning_type
    lo = m.lora
    task = peft.TaskType.CAUSAL_LM
    if ft == "lora":
        targets = _targets(spec)
        if lo.layers and targets == "all-linear":  # PEFT takes layers_to_transform only with a list of names
            targets = _linear_names(model)
        return peft.LoraConfig(
            task_type=task, r=lo.rank, lora_alpha=lo.alpha, lora_dropout=lo.dropout, target_modules=targets,
            use_dora=lo.dora, use_rslora=lo.rslora, init_lora_weights="pissa_niter_4" if lo.pissa else True,
            layers_to_transform=lo.layers or None, modules_to_save=lo.modules_to_save,
        )
    if ft == "adalora":
        a = m.adalora
        if total_steps is not None and a.tinit + a.tfinal >= total_steps:
            raise SpecError(f"method.adalora.tinit ({a.tinit}) + method.adalora.tfinal ({a.tfinal}) must be fewer than the "
                            f"training steps ({total_steps}): lower them or train longer (train.max_steps)")
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


def apply(spec: JobSpec, model, total_steps: int | None = None, run_dir: str | Path | None = None):
    """Make the right parameters trainable; returns the model to train (a PeftModel for PEFT methods).

    PiSSA moves the principal part of each weight into the adapter, so the base in memory is no longer the
    original one: its initial adapter is saved to RUN_DIR/pissa_init, for `save` to turn the trained one into a
    plain LoRA adapter (rank 2r) that works on the original base model.
    """
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
        from studio.model.models import find_adapter

        return peft.PeftModel.from_pretrained(model, str(find_adapter(spec.model.adapter)), is_trainable=True)
    import torch

    torch.manual_seed(spec.train.seed)  # the same initial adapter (and PiSSA residual) when a run resumes
    model = peft.get_peft_model(model, peft_config(spec, model, total_steps))
    if spec.method.finetuning_type == "lora" and spec.method.lora.pissa and run_dir is not None:
        model.peft_config["default"].init_lora_weights = True  # reload pissa_init as it is, without a new SVD
        if ev.rank() == 0:
            model.save_pretrained(str(Path(run_dir) / PISSA_INIT))
    return model


PISSA_INIT = "pissa_init"


def save(spec: JobSpec, model, target: Path, run_dir: Path) -> None:
    """After the trainer saved `target`: rewrite a PiSSA adapter as a plain LoRA one for the original base model."""
    init = Path(run_dir) / PISSA_INIT
    if spec.method.finetuning_type == "lora" and spec.method.lora.pissa and init.exists():
        model.save_pretrained(str(target), path_initial_model_for_weight_conversion=str(init))


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
    params = list(model.named_parameters(remove_duplicate=False))  # tied weights appear under both names
    for _, p in params:
        p.requires_grad_(False)
    found = 0
    for name, p in params:
        if name.startswith(layer_prefixes) and (not f.trainable_modules or any(k in name for k in f.trainable_modules)):
            p.requires_grad_(True)
            found += 1
    if not found:
        raise SpecError(f"method.freeze.trainable_modules: no parameter of layers {list(ids)} matches {f.trainable_modules}; "
                        "use names such as self_attn, mlp, q_proj, input_layernorm")
    for e in f.extra_modules or ():
        hits = [p for name, p in params if name.startswith(e + ".") or f".{e}." in f".{name}"]
        if not hits:
            raise SpecError(f"method.freeze.extra_modules: no module named `{e}` in this model; use names such as lm_head, norm, embed_tokens")
        for p in hits:
            p.requires_grad_(True)
    return model


def _numel(p) -> int:
    """Weights a parameter stands for: a 4-bit bitsandbytes tensor packs two of them into each byte."""
    return p.numel() * 2 if type(p).__name__ == "Params4bit" else p.numel()


def count_params(model) -> tuple[int, int]:
    trainable = sum(_numel(p) for p in model.parameters() if p.requires_grad)
    total = sum(_numel(p) for p in model.parameters())
    return trainable, total


def peak_memory() -> dict:
    """Peak resident memory of this process (and peak GPU memory allocated by torch, on a GPU), in MiB."""
    import resource
    import sys

    import torch

    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    out = {"peak_rss_mb": round(rss / (2**20 if sys.platform == "darwin" else 2**10), 1)}
    if torch.cuda.is_available():
        out["peak_gpu_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    return out


def callbacks(spec: JobSpec) -> list:
    """Trainer callbacks a method needs: AdaLoRA re-allocates ranks after each optimizer step."""
    if spec.method.finetuning_type != "adalora":
        return []
    from transformers import TrainerCallback

    class AdaLoraCallback(TrainerCallback):
        # PEFT: call update_and_allocate after optimizer.step() and before zero_grad() (it reads the gradients)
        def on_optimizer_step(self, args, state, control, model=None, **kw):
            base = getattr(model, "base_model", None)
            if base is not None and hasattr(base, "update_and_allocate"):
                base.update_and_allocate(state.global_step)

    return [AdaLoraCallback()]


def optimizers(spec: JobSpec, model, args) -> tuple:
    """(optimizer, scheduler) for the trainer; (None, None) lets it build them from train.optim.

    LoRA+ uses the optimizer class of train.optim, with lr x loraplus_lr_ratio for every lora_B matrix.
    """
    ratio = spec.method.lora.loraplus_lr_ratio
    if spec.method.finetuning_type != "lora" or not ratio:
        return None, None
    from peft.optimizers import create_loraplus_optimizer
    from transformers import Trainer

    cls, kwargs = Trainer.get_optimizer_cls_and_kwargs(args, model)
    kwargs = {k: v for k, v in kwargs.items() if k != "lr"}
    return create_loraplus_optimizer(model, cls, lr=args.learning_rate, loraplus_lr_ratio=ratio,
                                     weight_decay=args.weight_decay, **kwargs), None


TRACKERS = {"tensorboard": "tensorboard", "wandb": "wandb", "mlflow": "mlflow", "swanlab": "swanlab"}


def setup_reporting(spec: JobSpec, run_dir: Path) -> None:
    """Point the experiment tracker of train.report_to at the run folder; with train.report_offline, no network."""
    to, run_dir = spec.train.report_to, Path(run_dir).resolve()
    env = os.environ
    if to == "tensorboard":
        env.setdefault("TENSORBOARD_LOGGING_DIR", str(run_dir / "tensorboard"))
    elif to == "wandb":
        env.setdefault("WANDB_DIR", str(run_dir))
        env.setdefault("WANDB_PROJECT", "studio")
        env.setdefault("WANDB_NAME", run_dir.name)
        if spec.train.report_offline:
            env["WANDB_MODE"] = "offline"
    elif to == "mlflow":
        if spec.train.report_offline or "MLFLOW_TRACKING_URI" not in env:
            env["MLFLOW_TRACKING_URI"] = (run_dir / "mlruns").as_uri()
        env.setdefault("MLFLOW_EXPERIMENT_NAME", "studio")
        env.setdefault("MLFLOW_RUN_NAME", run_dir.name)
    elif to == "swanlab":
        env.setdefault("SWANLAB_LOG_DIR", str(run_dir / "swanlog"))
        env.setdefault("SWANLAB_PROJECT", "studio")
        if spec.train.report_offline:
            env["SWANLAB_MODE"] = "local"


def preflight(spec: JobSpec) -> None:
    """Checks that need this machine (installed packages, hardware), run before a job starts."""
    t, mo = spec.train, spec.model
    package = TRACKERS.get(t.report_to)
    if package and importlib.util.find_spec(package) is None:
        extra = " (or: pip install 'studio[tensorboard]')" if package == "tensorboard" else ""
        raise SpecError(f"train.report_to={t.report_to}: the `{package}` package is not installed; "
                        f"pip install {package}{extra}, or set train.report_to=none")
    from studio.model.models import quantizes

    if quantizes(spec) and importlib.util.find_spec("bitsandbytes") is None:
        fields = "model.quantization_bit" if mo.quantization_bit is not None else f"train.optim={t.optim}"
        raise SpecError(f"{fields}: needs the bitsandbytes package; pip install bitsandbytes")
    if t.liger_kernel or mo.attn_implementation not in ("auto", "eager", "sdpa"):
        from studio import hardware
        from studio.model import plan

        hw = hardware.Hardware.light(spec.launch.devices)
        if hw.cuda or spec.launch.devices == "cpu" or not hardware.detect():
            plan.plan(spec, hw)  # kernels the hardware or the installed packages lack: refused before Start
    if t.compute_dtype == "fp16":  # without importing torch (the web UI calls this); bf16 on an old GPU: the child says so
        from studio import hardware

        if spec.launch.devices == "cpu" or not hardware.detect():
            raise SpecError("train.compute_dtype=fp16: mixed fp16 training needs a CUDA GPU and this job has none; "
                            "use fp32 (or bf16) on the CPU")
