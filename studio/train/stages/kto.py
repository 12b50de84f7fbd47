"""Stage kto: answers labelled good or bad, with TRL's KTOTrainer (the reference as in dpo.py)."""
from __future__ import annotations

from studio.train.stages.base import TrainStage, ref_model, training_args


class Kto(TrainStage):
    def config(self, spec, run_dir, has_eval, the_plan):
        from trl import KTOConfig

        k = spec.method.kto
        return KTOConfig(loss_type=k.loss, beta=k.beta, desirable_weight=k.desirable_weight, undesirable_weight=k.undesirable_weight,
                         max_length=spec.data.cutoff_len, precompute_ref_log_probs=k.precompute_ref,
                         **training_args(spec, run_dir, has_eval, the_plan))

    def trainer(self, spec, model, tokenizer, template, args, train_ds, eval_ds, callbacks, optimizers):
        from trl import KTOTrainer

        return KTOTrainer(ref_model=ref_model(spec, spec.method.kto),
                          **self.common(model, tokenizer, template, args, train_ds, eval_ds, callbacks, optimizers))


STAGE = Kto()
