"""The preference and RL stages in the training child: TRL's trainer, config and model for method.stage.

    dpo   DPOTrainer (loss sigmoid, ipo, hinge, robust; ftx adds TRL's `sft` loss: RPO), ORPOTrainer (orpo),
          CPOTrainer (simpo)
    kto   KTOTrainer
    rm    RewardTrainer on AutoModelForSequenceClassification (one score)
    grpo  GRPOTrainer with the spec's reward functions (studio/train/rewards.py)

With a PEFT adapter and no method.<stage>.ref_model, the reference is the base with the adapter disabled (TRL does
this when `ref_model` is None and the model is a PeftModel): no second copy. With full or freeze tuning TRL loads a
frozen copy (or, with precompute_ref, computes the reference log-probabilities once and keeps no copy).
train.py calls `load_model`, `apply_method` and `trainer` in place of the SFT ones.
"""
from __future__ import annotations

import warnings
from pathlib import Path

from studio.spec.stages import PREFERENCE_STAGES

__all__ = ["PREFERENCE_STAGES", "load_model", "apply_method", "trainer", "preflight"]


def checkpointing(on: bool) -> dict:
    """transformers 5 renamed gradient_checkpointing to activation_checkpointing."""
    import dataclasses

    from trl import SFTConfig

    names = {f.name for f in dataclasses.fields(SFTConfig)}
    return {"activation_checkpointing" if "activation_checkpointing" in names else "gradient_checkpointing": on}


def _common(spec, run_dir: Path, has_eval: bool) -> dict:
    """TrainingArguments shared by every stage (the same as SFT's)."""
    import torch

    from studio.model.models import compute_dtype

    t = spec.train
    dtype = compute_dtype(t.compute_dtype)
    kw = dict(
        output_dir=str(run_dir), learning_rate=t.learning_rate, num_train_epochs=t.num_train_epochs, max_steps=t.max_steps,
        per_device_train_batch_size=t.per_device_train_batch_size, gradient_accumulation_steps=t.gradient_accumulation_steps,
        lr_scheduler_type=t.lr_scheduler_type, warmup_steps=t.warmup_steps if t.warmup_steps > 0 else t.warmup_ratio,
        weight_decay=t.weight_decay, max_grad_norm=t.max_grad_norm, optim=t.optim,
        bf16=dtype == torch.bfloat16, fp16=dtype == torch.float16, **checkpointing(t.gradient_checkpointing),
        logging_steps=t.logging_steps, save_steps=t.save_steps, save_total_limit=t.save_total_limit, seed=t.seed,
        data_seed=t.seed, report_to=[] if t.report_to == "none" else [t.report_to], disable_tqdm=True,
        logging_first_step=True, use_cpu=not torch.cuda.is_available(), save_only_model=False,
        ddp_find_unused_parameters=False if spec.launch.nproc_per_node > 1 else None,
    )
    if spec.launch.deepspeed:
        from studio.launch.deepspeed import for_this_rank

        kw["deepspeed"] = for_this_rank(spec.launch.deepspeed)
    if has_eval:
        kw.update(eval_strategy="steps" if t.eval_steps else "epoch", eval_steps=t.eval_steps,
                  per_device_eval_batch_size=t.per_device_train_batch_size)
    return kw


def _experimental():
    import os

    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")


def config(spec, run_dir: Path, has_eval: bool):
    """The TRL config of the stage, with the stage's section of the spec."""
    m, st, cut = spec.method, spec.method.stage, spec.data.cutoff_len
    kw = _common(spec, run_dir, has_eval)
    if st == "dpo":
        p = m.dpo
        if p.loss == "orpo":
            _experimental()
            from trl.experimental.orpo import ORPOConfig

            return ORPOConfig(beta=p.beta, max_length=cut, **kw)
        if p.loss == "simpo":
            _experimental()
            from trl.experimental.cpo import CPOConfig

            return CPOConfig(loss_type="simpo", beta=p.beta, simpo_gamma=p.simpo_gamma, cpo_alpha=p.ftx,
                             label_smoothing=p.label_smoothing, max_length=cut, **kw)
        from trl import DPOConfig

        losses, weights = [p.loss], None
        if p.ftx:
            losses, weights = [p.loss, "sft"], [1.0, p.ftx]
        return DPOConfig(loss_type=losses, loss_weights=weights, beta=p.beta, label_smoothing=p.label_smoothing,
                         max_length=cut, precompute_ref_log_probs=p.precompute_ref, **kw)
    if st == "kto":
        from trl import KTOConfig

        k = m.kto
        return KTOConfig(loss_type=k.loss, beta=k.beta, desirable_weight=k.desirable_weight,
                         undesirable_weight=k.undesirable_weight, max_length=cut, precompute_ref_log_probs=k.precompute_ref, **kw)
    if st == "rm":
        from trl import RewardConfig

        return RewardConfig(max_length=cut, center_rewards_coefficient=m.rm.center_rewards_coefficient, **kw)
    from trl import GRPOConfig

    g = m.grpo
    return GRPOConfig(num_generations=g.num_generations, max_completion_length=g.max_completion_length,
                      temperature=g.temperature, beta=g.beta, loss_type=g.loss, reward_weights=g.reward_weights,
                      use_vllm=g.use_vllm, vllm_mode="colocate", log_completions=False, **kw)


def load_model(spec):
    """The model to train: a causal LM, or for rm a sequence classifier with one output (the reward)."""
    from studio.model import models

    if spec.method.stage != "rm":
        return models.load_model(spec.model, spec.train.compute_dtype, for_training=True)
    from transformers import AutoModelForSequenceClassification

    dtype = models.compute_dtype(spec.train.compute_dtype)
    kw = dict(dtype=dtype, num_labels=1, trust_remote_code=spec.model.trust_remote_code)
    q = models.quantization_config(spec.model, dtype)
    if q is not None:
        import torch

        kw.update(quantization_config=q, device_map={"": torch.cuda.current_device()} if torch.cuda.is_available() else {"": "cpu"})
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = AutoModelForSequenceClassification.from_pretrained(models.resolve(spec.model.name_or_path), **kw)
    except OSError as e:
        raise models.ModelError(f"model.name_or_path: cannot load `{spec.model.name_or_path}` ({e})") from None
    return model


def apply_method(spec, model, total_steps, run_dir):
    """methods.apply, but a reward model's adapter is a sequence-classification one whose score head is trained too."""
    from studio.model import methods

    if spec.method.stage != "rm":
        return methods.apply(spec, model, total_steps=total_steps, run_dir=run_dir)
    if spec.method.finetuning_type != "lora" or spec.model.adapter:
        model = methods.apply(spec, model, total_steps=total_steps, run_dir=run_dir)
        for name, p in model.named_parameters():
            if "score" in name.split("."):
                p.requires_grad_(True)
        return model
    import peft
    import torch

    if spec.model.quantization_bit:
        model = peft.prepare_model_for_kbit_training(model, use_gradient_checkpointing=spec.train.gradient_checkpointing)
    cfg = methods.peft_config(spec, model, total_steps)
    cfg.task_type = peft.TaskType.SEQ_CLS
    cfg.modules_to_save = list(cfg.modules_to_save or []) + ["score"]
    torch.manual_seed(spec.train.seed)
    return peft.get_peft_model(model, cfg)


def _ref_model(spec, section):
    if not section.ref_model:
        return None
    import dataclasses

    from studio.model import models

    return models.load_model(dataclasses.replace(spec.model, name_or_path=section.ref_model, quantization_bit=None),
                             spec.train.compute_dtype)


def trainer(spec, model, tokenizer, template, run_dir: Path, train_ds, eval_ds, callbacks, optimizers):
    """TRL's trainer for the stage, ready to train."""
    if template.builtin:
        tokenizer.chat_template = template.chat_template()  # TRL renders conversations with the tokenizer's template
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if getattr(model.config, "pad_token_id", None) is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    args = config(spec, run_dir, eval_ds is not None)
    m, st = spec.method, spec.method.stage
    common = dict(model=model, args=args, train_dataset=train_ds, eval_dataset=eval_ds, processing_class=tokenizer,
                  callbacks=list(callbacks), optimizers=optimizers)
    if st == "dpo":
        if m.dpo.loss == "orpo":
            from trl.experimental.orpo import ORPOTrainer

            return ORPOTrainer(**common)
        if m.dpo.loss == "simpo":
            from trl.experimental.cpo import CPOTrainer

            return CPOTrainer(**common)
        from trl import DPOTrainer

        return DPOTrainer(ref_model=_ref_model(spec, m.dpo), **common)
    if st == "kto":
        from trl import KTOTrainer

        return KTOTrainer(ref_model=_ref_model(spec, m.kto), **common)
    if st == "rm":
        from trl import RewardTrainer

        return RewardTrainer(**common)
    from trl import GRPOTrainer

    from studio.train import rewards

    return GRPOTrainer(reward_funcs=rewards.load(m.grpo), **common)


def samples_of(trainer, n: int = 4):
    """For GRPO: a function giving the `n` latest completions with their prompt, reward per function and advantage
    (read from the trainer's own record of its last generation batch); None for the other trainers."""
    logs = getattr(trainer, "_logs", None)
    if not isinstance(logs, dict) or "completion" not in logs:
        return None

    def text(messages) -> str:
        return str(messages[-1].get("content", "")) if isinstance(messages, list) and messages else str(messages)

    def num(v):
        return round(float(v), 4) if isinstance(v, (int, float)) and v == v else None

    def latest() -> list[dict]:
        k = len(logs["completion"])
        out = []
        for i in range(max(0, k - n), k):
            rewards = {name: num(vals[i]) for name, vals in logs["rewards"].items() if i < len(vals)}
            adv = logs["advantages"][i] if i < len(logs["advantages"]) else None
            out.append({"prompt": text(logs["prompt"][i])[-300:], "completion": text(logs["completion"][i])[:500],
                        "rewards": rewards, "advantage": num(adv)})
        return out

    return latest


def preflight(spec) -> None:
    """Parent side, before the child starts: the user's reward files exist and define their functions."""
    if spec.method.stage != "grpo":
        return
    from studio.train.rewards import check_file
    from studio.spec.stages import BUILTIN_REWARDS

    for ref in spec.method.grpo.reward_funcs:
        if str(ref) not in BUILTIN_REWARDS:
            check_file(str(ref))
    if spec.method.grpo.use_vllm:
        import importlib.util

        from studio.spec import SpecError

        if importlib.util.find_spec("vllm") is None:
            raise SpecError("method.grpo.use_vllm: the vllm package is not installed; install it on a GPU machine, or set "
                            "method.grpo.use_vllm=false")
