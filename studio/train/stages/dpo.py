"""Stage dpo: preference pairs. DPOTrainer (loss sigmoid, ipo, hinge, robust; method.dpo.ftx adds TRL's `sft` loss:
RPO), ORPOTrainer (orpo), CPOTrainer (simpo).

With a PEFT adapter and no method.dpo.ref_model, the reference is the base with the adapter disabled (TRL does this
when `ref_model` is None and the model is a PeftModel): no second copy. With full or freeze tuning TRL loads a frozen
copy (or, with precompute_ref, computes the reference log-probabilities once and keeps no copy).
"""
from __future__ import annotations

from studio.train.stages.base import TrainStage, experimental, ref_model, training_args


class Dpo(TrainStage):
    def config(self, spec, run_dir, has_eval, the_plan):
        p, cut = spec.method.dpo, spec.data.cutoff_len
        kw = training_args(spec, run_dir, has_eval, the_plan)
        if p.loss == "orpo":
            experimental()
            from trl.experimental.orpo import ORPOConfig

            return ORPOConfig(beta=p.beta, max_length=cut, **kw)
        if p.loss == "simpo":
            experimental()
            from trl.experimental.cpo import CPOConfig

            return CPOConfig(loss_type="simpo", beta=p.beta, simpo_gamma=p.simpo_gamma, cpo_alpha=p.ftx,
                             label_smoothing=p.label_smoothing, max_length=cut, **kw)
        from trl import DPOConfig

        losses, weights = [p.loss], None
        if p.ftx:
            losses, weights = [p.loss, "sft"], [1.0, p.ftx]
        return DPOConfig(loss_type=losses, loss_weights=weights, beta=p.beta, label_smoothing=p.label_smoothing,
                         max_length=cut, precompute_ref_log_probs=p.precompute_ref, **kw)

    def trainer(self, spec, model, tokenizer, template, args, train_ds, eval_ds, callbacks, optimizers):
        common = self.common(model, tokenizer, template, args, train_ds, eval_ds, callbacks, optimizers)
        loss = spec.method.dpo.loss
        if loss == "orpo":
            from trl.experimental.orpo import ORPOTrainer

            return ORPOTrainer(**common)
        if loss == "simpo":
            from trl.experimental.cpo import CPOTrainer

            return CPOTrainer(**common)
        from trl import DPOTrainer

        return DPOTrainer(ref_model=ref_model(spec, spec.method.dpo), **common)


STAGE = Dpo()
