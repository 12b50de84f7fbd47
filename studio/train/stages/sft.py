"""Stage sft: supervised fine-tuning on chats with TRL's SFTTrainer (studio/data/encode.py makes the rows: the
template, the loss mask, packing). Stage pt trains the same way on plain text (pt.py)."""
from __future__ import annotations

import time
from pathlib import Path

from studio.train.stages.base import TrainStage, training_args


def sft_config(spec, run_dir: Path, has_eval: bool, the_plan=None):
    """TRL's SFTConfig: the shared training arguments plus SFT's own (length, packing, batching, NEFTune)."""
    from trl import SFTConfig

    from studio.hardware import Hardware
    from studio.model import plan

    p = the_plan or plan.plan(spec, Hardware.detect())
    t, d = spec.train, spec.data
    prompt_style = spec.method.finetuning_type in ("prefix", "prompt", "ptuning", "ptuning_v2")
    return SFTConfig(
        **training_args(spec, run_dir, has_eval, p), neftune_noise_alpha=t.neftune_alpha,
        include_num_input_tokens_seen="non_padding", max_length=d.cutoff_len,
        packing=d.packing and not prompt_style, packing_strategy="bfd", padding_free=d.packing and not prompt_style,
        train_sampling_strategy="group_by_length" if p.group_by_length else "random",
        shuffle_dataset=d.seed_shuffle, dataset_num_proc=None, remove_unused_columns=True,
    )


def trainer_class():
    """TRL's SFTTrainer; on the CPU with the model's own loss.

    TRL computes the loss through a fused LM head that, without a GPU kernel, projects every position in chunks,
    projects them again in the backward pass and adds entropy and top-1 metrics over the vocabulary: a micro-batch
    of the default model takes 1.3-1.6x the time of the model's own forward and loss (docs/benchmarks.md). The loss
    and the gradients are the same (tests/test_train.py), so on the CPU the plain `Trainer.compute_loss` runs.
    """
    import torch
    from transformers import Trainer
    from trl import SFTTrainer

    if torch.cuda.is_available():
        return SFTTrainer

    class CPUSFTTrainer(SFTTrainer):
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            return Trainer.compute_loss(self, model, {**inputs, "use_cache": False}, return_outputs, num_items_in_batch)

    return CPUSFTTrainer


class Sft(TrainStage):
    def data(self, spec, tokenizer, template, writer):
        from studio.data import encode

        t0 = time.time()
        train_ds, eval_ds, report = encode.build(spec, tokenizer, template)
        writer.write("message", text=f"data: {report.examples} examples, {report.tokens} tokens, {report.trained_tokens} trained tokens, "
                                     f"{report.truncated} cut at cutoff_len, {report.dropped} dropped ({time.time() - t0:.1f}s)")
        return train_ds, eval_ds, report

    def config(self, spec, run_dir, has_eval, the_plan):
        return sft_config(spec, run_dir, has_eval, the_plan)

    def trainer(self, spec, model, tokenizer, template, args, train_ds, eval_ds, callbacks, optimizers):
        return trainer_class()(model=model, args=args, train_dataset=train_ds, eval_dataset=eval_ds, processing_class=tokenizer,
                               callbacks=list(callbacks), optimizers=optimizers)

    def prepare(self, trainer, the_plan) -> None:
        if the_plan.group_by_length:
            from studio.data.grouping import use_global_groups

            use_global_groups(trainer)
        if the_plan.packed_rows:
            from studio.data.packed_rows import use_rows

            use_rows(trainer)

    def eval_metrics(self, logs: dict) -> dict:
        return {"eval_loss": logs.get("eval_loss")}


STAGE = Sft()
