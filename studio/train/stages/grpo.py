"""Stage grpo: reinforcement learning with TRL's GRPOTrainer and the spec's reward functions (studio/train/rewards.py)."""
from __future__ import annotations

from studio.train.stages.base import TrainStage, training_args


class Grpo(TrainStage):
    def config(self, spec, run_dir, has_eval, the_plan):
        from trl import GRPOConfig

        g = spec.method.grpo
        return GRPOConfig(num_generations=g.num_generations, max_completion_length=g.max_completion_length,
                          temperature=g.temperature, beta=g.beta, loss_type=g.loss, reward_weights=g.reward_weights,
                          use_vllm=g.use_vllm, vllm_mode="colocate", log_completions=False,
                          **training_args(spec, run_dir, has_eval, the_plan))

    def trainer(self, spec, model, tokenizer, template, args, train_ds, eval_ds, callbacks, optimizers):
        from trl import GRPOTrainer

        from studio.train import rewards

        return GRPOTrainer(reward_funcs=rewards.load(spec.method.grpo),
                           **self.common(model, tokenizer, template, args, train_ds, eval_ds, callbacks, optimizers))

    def samples(self, trainer, n: int = 4):
        """A function giving the `n` latest completions with their prompt, reward per function and advantage (read
        from the trainer's own record of its last generation batch)."""
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

    def preflight(self, spec) -> None:
        """Parent side, before the child starts: the user's reward files exist and define their functions."""
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


STAGE = Grpo()
