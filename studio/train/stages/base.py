"""What every training stage shares: the training arguments taken from the spec, and the steps of a stage.

The training child (studio/train/job.py) calls, for the spec's method.stage:
    data -> load_model -> config -> apply_method -> trainer -> prepare -> (train) -> eval_metrics
`TrainStage` does each step as the preference and RL stages do (TRL rows from studio/data/preference.py, the causal
LM, the spec's method); a stage overrides what it does differently.
"""
from __future__ import annotations

import time
from pathlib import Path


def checkpointing(on: bool) -> dict:
    """transformers 5 renamed gradient_checkpointing to activation_checkpointing."""
    import dataclasses

    from trl import SFTConfig

    names = {f.name for f in dataclasses.fields(SFTConfig)}
    return {"activation_checkpointing" if "activation_checkpointing" in names else "gradient_checkpointing": on}


def training_args(spec, run_dir: Path, has_eval: bool, the_plan) -> dict:
    """The TrainingArguments every stage takes from the spec (steps, optimiser, precision, saving, evaluation, kernels)."""
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
        from studio.train.deepspeed import for_this_rank

        kw["deepspeed"] = for_this_rank(spec.launch.deepspeed)
    if the_plan.tf32:
        kw["tf32"] = True
    if the_plan.liger:
        kw["use_liger_kernel"] = True
    if has_eval:
        kw.update(eval_strategy="steps" if t.eval_steps else "epoch", eval_steps=t.eval_steps,
                  per_device_eval_batch_size=t.per_device_train_batch_size)
        if t.load_best_model_at_end or t.early_stopping_patience is not None:
            metric = t.metric_for_best_model
            kw.update(metric_for_best_model=metric, greater_is_better=not metric.endswith("loss"),
                      load_best_model_at_end=t.load_best_model_at_end)
    return kw


def numbers(logs: dict, skip=()) -> dict:
    """Every number the trainer logged, under its own name (rewards/margins, reward_std, kl, ...)."""
    return {k: v for k, v in logs.items() if k not in skip and isinstance(v, (int, float)) and not isinstance(v, bool)}


def ref_model(spec, section):
    """The reference model a section names (method.<stage>.ref_model), or None: TRL then uses the policy as it starts."""
    if not section.ref_model:
        return None
    import dataclasses

    from studio.model import models

    return models.load_model(dataclasses.replace(spec.model, name_or_path=section.ref_model, quantization_bit=None),
                             spec.train.compute_dtype)


def experimental() -> None:
    """TRL's trainers under trl.experimental warn at import; the spec chose them knowingly."""
    import os

    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")


class TrainStage:
    """A stage as the training child runs it. The defaults are the preference and RL stages' steps."""

    def data(self, spec, tokenizer, template, writer):
        """-> (train Dataset, eval Dataset or None, a report with `examples`)."""
        from studio.data import encode, preference

        t0 = time.time()
        train_ds, eval_ds, note = preference.build(spec)
        writer.write("message", text=f"{note} ({time.time() - t0:.1f}s)")
        return train_ds, eval_ds, encode.Report(examples=len(train_ds))

    def load_model(self, spec):
        from studio.model import models

        return models.load_model(spec.model, spec.train.compute_dtype, for_training=True)

    def apply_method(self, spec, model, total_steps: int, run_dir: Path):
        from studio.model import methods

        return methods.apply(spec, model, total_steps=total_steps, run_dir=run_dir)

    def config(self, spec, run_dir: Path, has_eval: bool, the_plan):
        """The trainer's config: `training_args` and the stage's own section."""
        raise NotImplementedError

    def trainer(self, spec, model, tokenizer, template, args, train_ds, eval_ds, callbacks, optimizers):
        """The stage's trainer, ready to train."""
        raise NotImplementedError

    def common(self, model, tokenizer, template, args, train_ds, eval_ds, callbacks, optimizers) -> dict:
        """The keyword arguments of every TRL trainer; TRL renders conversations with the tokenizer's chat template."""
        if template.builtin:
            tokenizer.chat_template = template.chat_template()
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        if getattr(model.config, "pad_token_id", None) is None:
            model.config.pad_token_id = tokenizer.pad_token_id
        return dict(model=model, args=args, train_dataset=train_ds, eval_dataset=eval_ds, processing_class=tokenizer,
                    callbacks=list(callbacks), optimizers=optimizers)

    def prepare(self, trainer, the_plan) -> None:
        """Changes to the built trainer (batching); none by default."""

    def samples(self, trainer):
        """A function giving the latest generations with their rewards (written after each log), or None."""
        return None

    def preflight(self, spec) -> None:
        """Parent side, before the child starts: checks that need files or packages (none by default)."""

    def eval_metrics(self, logs: dict) -> dict:
        """What the done event keeps of the last evaluation: every number the trainer logged."""
        return numbers(logs, skip=("epoch",))
