"""Stage rm: a reward model (AutoModelForSequenceClassification with one score) on preference pairs, with TRL's
RewardTrainer."""
from __future__ import annotations

import warnings

from studio.train.stages.base import TrainStage, training_args


class Rm(TrainStage):
    def load_model(self, spec):
        """A sequence classifier with one output (the reward)."""
        from transformers import AutoModelForSequenceClassification

        from studio.model import models

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

    def apply_method(self, spec, model, total_steps, run_dir):
        """methods.apply, but a reward model's adapter is a sequence-classification one whose score head is trained too."""
        from studio.model import methods

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

    def config(self, spec, run_dir, has_eval, the_plan):
        from trl import RewardConfig

        return RewardConfig(max_length=spec.data.cutoff_len, center_rewards_coefficient=spec.method.rm.center_rewards_coefficient,
                            **training_args(spec, run_dir, has_eval, the_plan))

    def trainer(self, spec, model, tokenizer, template, args, train_ds, eval_ds, callbacks, optimizers):
        from trl import RewardTrainer

        return RewardTrainer(**self.common(model, tokenizer, template, args, train_ds, eval_ds, callbacks, optimizers))


STAGE = Rm()
