"""Training entry point: reads RUN_DIR/spec.yaml, trains with the stage's TRL trainer, writes events and results.

    python -m studio.train.job runs/identity_lora          (what `studio train SPEC` starts in the background)

setup (tokenizer, the stage's data, model, method; studio/train/stages/) -> trainer -> train -> save adapter/ or
model/ -> `done`.
SIGTERM or SIGINT: stop after the current step, save a checkpoint and the adapter, write `aborted`.
"""
from __future__ import annotations

import math
import os
import time
from pathlib import Path

from studio import spec as specmod
from studio.run import events as ev
from studio.run import job
from studio.train.stages.base import numbers



class _Stop:
    requested = False
    training = False

    @classmethod
    def handler(cls, signum, frame):
        first = not cls.requested  # torchrun forwards the launcher's SIGTERM: a rank may get it twice
        cls.requested = True
        if first and not cls.training:
            raise job.Aborted()


def _flag_tensor(flag: bool, device=None):
    import torch

    return torch.tensor([1.0 if flag else 0.0], device=device)


def _dist_any(flag: bool, device=None) -> bool:
    """True on every rank if any rank has `flag` (so all ranks stop at the same step).

    `device` is the rank's own device (the trainer's `args.device`): on CUDA the process group is NCCL, which
    refuses CPU tensors."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return flag
    t = _flag_tensor(flag, device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def make_callback(writer: ev.EventWriter, run_dir: Path, extra_start: dict):
    from transformers import TrainerCallback

    class EventCallback(TrainerCallback):
        samples = None  # () -> a few of the latest generations with their rewards (GRPO), written after each log

        def on_train_begin(self, args, state, control, **kw):
            self.t0 = time.time()
            self.step0 = state.global_step
            self.tokens0 = state.num_input_tokens_seen or 0
            self.last_t, self.last_tokens = self.t0, self.tokens0
            writer.write("start", task="train", total_steps=state.max_steps, resumed_from=self.step0, **extra_start)

        def on_step_end(self, args, state, control, **kw):
            if _dist_any(_Stop.requested, args.device):
                _Stop.requested = True
                control.should_save = True
                control.should_training_stop = True

        def on_log(self, args, state, control, logs=None, **kw):
            logs = logs or {}
            now = time.time()
            if "eval_loss" in logs:
                writer.write("eval", step=state.global_step, **numbers(logs))
                return
            if "loss" not in logs:
                return
            tokens = state.num_input_tokens_seen or 0
            dt = max(now - self.last_t, 1e-9)
            tps = (tokens - self.last_tokens) / dt
            self.last_t, self.last_tokens = now, tokens
            done = state.global_step - self.step0
            elapsed = now - self.t0
            eta = elapsed / done * (state.max_steps - state.global_step) if done else None
            writer.write("log", step=state.global_step, total_steps=state.max_steps, epoch=round(state.epoch or 0, 4),
                         loss=logs.get("loss"), learning_rate=logs.get("learning_rate"), grad_norm=logs.get("grad_norm"),
                         tokens_per_second=round(tps, 1), tokens_seen=tokens, elapsed_s=round(elapsed, 2),
                         eta_s=round(eta, 1) if eta is not None else None,
                         **numbers(logs, skip=("loss", "learning_rate", "grad_norm", "epoch")))
            if self.samples is not None:  # the writer writes on rank 0 only
                items = self.samples()
                if items:
                    writer.write("samples", step=state.global_step, items=items)

        def on_save(self, args, state, control, **kw):
            from studio.run.filemodes import usual_modes

            usual_modes(run_dir / f"checkpoint-{state.global_step}")  # safetensors writes 0600
            writer.write("checkpoint", step=state.global_step, path=str(run_dir / f"checkpoint-{state.global_step}"))

    return EventCallback()


def run(spec, run_dir: Path, writer: ev.EventWriter, callbacks=()) -> dict:
    import torch

    from studio.data.templates import Template
    from studio.hardware import Hardware
    from studio.model import methods, models, plan
    from studio.train import stages

    if spec.train.num_threads:
        torch.set_num_threads(spec.train.num_threads)
    stage = stages.get(spec.method.stage)
    tokenizer = models.load_tokenizer(spec.model.name_or_path, spec.model.trust_remote_code)
    template = Template(spec.model.template, tokenizer)
    train_ds, eval_ds, report = stage.data(spec, tokenizer, template, writer)
    model = stage.load_model(spec)
    model.config.use_cache = False  # a KV cache in the forward pass would hide packed-sequence boundaries
    the_plan = plan.plan(spec, Hardware.detect())
    writer.write("message", text="plan: " + the_plan.text())
    args = stage.config(spec, run_dir, eval_ds is not None, the_plan)
    steps_per_epoch = math.ceil(len(train_ds) / (args.per_device_train_batch_size * args.gradient_accumulation_steps * max(args.world_size, 1)))
    total = spec.train.max_steps if spec.train.max_steps > 0 else math.ceil(steps_per_epoch * spec.train.num_train_epochs)
    from transformers import set_seed

    set_seed(spec.train.seed)  # adapters start the same on every rank and for any process count
    model = stage.apply_method(spec, model, total, run_dir)
    if spec.train.gradient_checkpointing and hasattr(model, "enable_input_require_grads"):
        model.enable_input_require_grads()
    trainable, total_params = methods.count_params(model)
    callback = make_callback(writer, run_dir, {"num_examples": len(train_ds), "trainable_params": trainable,
                                               "total_params": total_params, "data": vars(report) | {"issues": None}})
    methods.setup_reporting(spec, run_dir)
    stopper = early_stopping(spec, eval_ds is not None)
    trainer = stage.trainer(spec, model, tokenizer, template, args, train_ds, eval_ds,
                            [callback, *methods.callbacks(spec), *callbacks, *stopper], methods.optimizers(spec, model, args))
    callback.samples = stage.samples(trainer)
    stage.prepare(trainer, the_plan)
    resume = spec.train.resume_from_checkpoint
    if resume == "auto":
        from studio.run.status import last_checkpoint

        ck = last_checkpoint(run_dir)
        resume = str(ck) if ck else None
        writer.write("message", text=f"resuming from {ck}" if ck else "no checkpoint to resume from: starting fresh")
    _Stop.training = True
    if _Stop.requested:
        raise job.Aborted()
    result = trainer.train(resume_from_checkpoint=resume)
    _Stop.training = False
    out = save(spec, trainer, run_dir, template)
    metrics = {"step": trainer.state.global_step, "train_loss": result.training_loss, "train_runtime_s": result.metrics.get("train_runtime"),
               "trainable_params": trainable, "total_params": total_params, **out}
    metrics.update(methods.peak_memory())
    metrics.update(best_fields(spec, trainer, stopper, total))
    if eval_ds is not None and not _Stop.requested:
        done = [h for h in trainer.state.log_history if "eval_loss" in h and h.get("step") == trainer.state.global_step]
        last = done[-1] if done else trainer.evaluate()
        metrics.update(stage.eval_metrics(last))
    if _Stop.requested:
        metrics["aborted"] = True
    return metrics


def early_stopping(spec, has_eval: bool) -> list:
    """transformers' EarlyStoppingCallback when train.early_stopping_patience is set (and there is eval data)."""
    if spec.train.early_stopping_patience is None or not has_eval:
        return []
    from transformers import EarlyStoppingCallback

    return [EarlyStoppingCallback(early_stopping_patience=spec.train.early_stopping_patience)]


def best_fields(spec, trainer, stopper: list, total_steps: int) -> dict:
    """For the done event: the best evaluation (step, metric), whether the saved weights are from it, and whether
    early stopping ended the run."""
    t, st = spec.train, trainer.state
    if not (t.load_best_model_at_end or stopper) or st.best_metric is None:
        return {}
    out = {"best_step": st.best_global_step, "best_metric": st.best_metric, "metric_for_best_model": t.metric_for_best_model,
           "weights_from_step": st.best_global_step if t.load_best_model_at_end and st.best_model_checkpoint else st.global_step}
    if stopper:
        patience = stopper[0].early_stopping_patience_counter >= t.early_stopping_patience
        out["early_stopped"] = bool(patience and st.global_step < total_steps)
    return out


def save(spec, trainer, run_dir: Path, template) -> dict:
    """Rank 0 writes adapter/ (PEFT) or model/ (full, freeze), with the tokenizer and the template used."""
    from studio.model import methods

    target = run_dir / ("adapter" if methods.is_peft(spec) else "model")
    trainer.save_model(str(target))
    if trainer.is_world_process_zero():
        methods.save(spec, trainer.model, target, run_dir)  # PiSSA: a plain LoRA adapter for the original base
        tok = trainer.processing_class
        if template.builtin:
            tok.chat_template = template.chat_template()
        tok.save_pretrained(str(target))
        specmod.dump(spec, target / "spec.yaml")
        from studio.run.filemodes import usual_modes

        usual_modes(target)  # safetensors writes 0600: the adapter must be as readable as its other files
    return {"path": str(target)}


def leave_process_group() -> None:
    """Every rank waits for the others, then leaves: a rank that exits while a peer (on another node) still talks
    to it gets its gloo threads cut off and aborts, failing the job at its very end."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def body(spec, run_dir: Path, writer: ev.EventWriter):
    metrics = run(spec, run_dir, writer)
    leave_process_group()
    if metrics.pop("aborted", False):
        return "aborted", {"checkpoint": str(run_dir / f"checkpoint-{metrics['step']}"), **metrics}
    if spec.train.benchmarks and int(os.environ.get("RANK", "0")) == 0:
        from studio.evaluate import scorecard

        writer.write("message", text=f"benchmarks after training: {', '.join(spec.train.benchmarks)}")
        metrics.update(scorecard.after_training(spec, run_dir, lambda text: writer.write("message", text=text)))
    return "done", metrics


def main(argv: list[str] | None = None) -> int:
    return job.main(body, __doc__, argv, on_signal=_Stop.handler)


if __name__ == "__main__":
    raise SystemExit(main())
