"""The training stages: one table that data, the page, the CLI and the training child read, and the options of the
preference and RL stages (method.dpo, method.kto, method.rm, method.grpo) with their checks.

    method: {stage: dpo, dpo: {beta: 0.1, loss: sigmoid, ftx: 0.0}}
    method: {stage: grpo, grpo: {reward_funcs: [examples/rewards.py:short_answer], num_generations: 4}}

A stage is a `Stage` row in `TABLE` (its data, its options section, what the page plots, its own checks) and a
module studio/train/stages/<name>.py (its TRL config and trainer): adding a stage touches these two files.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional

from studio.spec.fields import SpecError, _f

__all__ = ["STAGES", "PREFERENCE_STAGES", "STAGE_TABLE", "Stage", "too_short",
           "DPO_LOSSES", "KTO_LOSSES", "GRPO_LOSSES", "BUILTIN_REWARDS",
           "DpoSpec", "KtoSpec", "RmSpec", "GrpoSpec"]  # what `studio.spec` re-exports (not `validate`)

DPO_LOSSES = ["sigmoid", "ipo", "hinge", "robust", "orpo", "simpo"]
KTO_LOSSES = ["kto", "apo_zero_unpaired"]
GRPO_LOSSES = ["dapo", "grpo", "dr_grpo", "bnpo", "cispo", "sapo"]
BUILTIN_REWARDS = ["format", "exact", "numeric", "length"]


@dataclass
class DpoSpec:
    loss: str = _f("sigmoid", "Preference loss: sigmoid (DPO), ipo, hinge (SLiC), robust (noisy labels), orpo (no reference "
                              "model, TRL's ORPOTrainer), simpo (no reference model, TRL's CPOTrainer).", choices=DPO_LOSSES)
    beta: float = _f(0.1, "DPO beta: how far the policy may move from the reference (higher: closer). For ipo the "
                          "regularisation tau; for orpo the weight lambda of the odds-ratio term; for simpo the reward scale.")
    ftx: float = _f(0.0, "SFT mix weight: add this x the negative log-likelihood of the chosen answers to the loss (RPO; for "
                         "simpo: CPO's behaviour-cloning term). 0: off.")
    label_smoothing: float = _f(0.0, "Share of preference labels assumed flipped (losses robust and simpo; 0.1 is "
                                     "typical). 0: labels trusted.")
    simpo_gamma: float = _f(0.5, "SimPO target reward margin (loss simpo only).")
    ref_model: Optional[str] = _f(None, "Reference model. Empty: the model being trained as it starts (with a PEFT adapter: "
                                        "the base with the adapter disabled, no second copy; full or freeze tuning: a frozen "
                                        "copy). Or a model folder / hub id. orpo and simpo use none.")
    precompute_ref: bool = _f(False, "Compute the reference log-probabilities once before training, so the reference model "
                                     "is not kept in memory (useful with full tuning).")


@dataclass
class KtoSpec:
    loss: str = _f("kto", "KTO loss: kto, or apo_zero_unpaired.", choices=KTO_LOSSES)
    beta: float = _f(0.1, "KTO beta: how far the policy may move from the reference (higher: closer).")
    desirable_weight: float = _f(1.0, "Weight of the losses of answers labelled good (raise it when good answers are rarer).")
    undesirable_weight: float = _f(1.0, "Weight of the losses of answers labelled bad.")
    ref_model: Optional[str] = _f(None, "Reference model. Empty: the model being trained as it starts (with a PEFT adapter: "
                                        "the base with the adapter disabled). Or a model folder / hub id.")
    precompute_ref: bool = _f(False, "Compute the reference log-probabilities once before training.")


@dataclass
class RmSpec:
    center_rewards_coefficient: Optional[float] = _f(None, "Pull the mean reward towards 0 with this weight (0.01 is "
                                                           "typical). Empty: off.")


@dataclass
class GrpoSpec:
    reward_funcs: list = _f(["format"], "Reward functions: built-ins (format: the answer matches format_regex; exact / "
                                        "numeric: the answer equals the dataset's reference column; length: 1 up to "
                                        "length_target characters, less beyond) or your own, as `path/to/file.py:function`.")
    reward_weights: Optional[list] = _f(None, "Weight of each reward function, in the order of reward_funcs. Empty: all 1.")
    num_generations: int = _f(4, "Answers sampled per prompt; each is scored against the group's mean reward.")
    max_completion_length: int = _f(64, "Longest answer generated, in tokens.")
    temperature: float = _f(1.0, "Sampling temperature of the generations (higher: more varied answers to compare).")
    beta: float = _f(0.0, "KL penalty towards the reference model (0: none, and no reference model is kept; 0.001-0.04 "
                          "is typical).")
    loss: str = _f("dapo", "GRPO loss aggregation: dapo (token-level), grpo (per sequence), dr_grpo, bnpo, cispo, sapo.",
                   choices=GRPO_LOSSES)
    format_regex: str = _f(r"(?s).*\S.*", "Built-in `format` reward: 1 when the answer matches this regular expression "
                                           "(re.search), else 0.")
    length_target: int = _f(200, "Built-in `length` reward: 1 for answers up to this many characters, falling to 0 at twice it.")
    use_vllm: bool = _f(False, "Generate with vLLM (TRL's colocate mode; needs a GPU and the vllm package).")


@dataclass(frozen=True)
class Stage:
    """One training stage as every side sees it."""
    name: str
    help: str  # what it trains on, for the stage choice's help
    data: tuple  # the dataset kinds it trains on (studio/data/registry.py: chat, text, ranking, kto, prompt)
    rows: Optional[str] = None  # the TRL rows it trains on (studio/data/preference.py): pairs, labelled, prompts;
    #                              None: SFT's own encoding (studio/data/encode.py)
    section: Optional[type] = None  # its options, method.<name>
    section_help: str = ""
    title: str = ""  # the page's title over its options
    plotted: tuple = ()  # logged metrics the page draws beside the loss (a trailing * matches a prefix)
    check: Optional[Callable] = None  # its own rules: check(spec) raises SpecError naming the fields
    defaults: dict = field(default_factory=dict, compare=False)  # what the page's form takes when the stage is chosen
    #                                                               (dotted field -> value; the page's own otherwise)


def _check_dpo(spec) -> None:
    p = spec.method.dpo
    if p.beta <= 0:
        raise SpecError("method.dpo.beta: must be greater than 0 (0.1 is typical)")
    if not 0 <= p.label_smoothing < 0.5:
        raise SpecError("method.dpo.label_smoothing: must be in [0, 0.5)")
    if p.label_smoothing and p.loss not in ("robust", "simpo"):
        raise SpecError(f"method.dpo.label_smoothing with method.dpo.loss={p.loss}: TRL applies label smoothing in the "
                        "robust and simpo losses; set method.dpo.label_smoothing=0 or choose one of them")
    if p.ftx < 0:
        raise SpecError("method.dpo.ftx: must be 0 or more")
    if p.loss in ("orpo", "simpo") and (p.ref_model or p.precompute_ref):
        raise SpecError(f"method.dpo.ref_model / method.dpo.precompute_ref with method.dpo.loss={p.loss}: {p.loss} "
                        "uses no reference model; clear them")
    if p.loss == "orpo" and p.ftx:
        raise SpecError("method.dpo.ftx with method.dpo.loss=orpo: ORPO always includes the SFT loss (its odds-ratio "
                        "weight is method.dpo.beta); set method.dpo.ftx=0")
    if p.loss in ("orpo", "simpo") and spec.model.quantization_bit is not None:
        raise SpecError(f"method.dpo.loss={p.loss} with model.quantization_bit: not supported here; use sigmoid, or "
                        "set model.quantization_bit to null")


def _check_kto(spec) -> None:
    k = spec.method.kto
    if k.beta <= 0:
        raise SpecError("method.kto.beta: must be greater than 0 (0.1 is typical)")
    if k.desirable_weight <= 0 or k.undesirable_weight <= 0:
        raise SpecError("method.kto.desirable_weight and method.kto.undesirable_weight: must be greater than 0")


def _check_rm(spec) -> None:
    m = spec.method
    if m.finetuning_type not in ("lora", "full", "freeze"):
        raise SpecError(f"method.finetuning_type={m.finetuning_type} with method.stage=rm: a reward model trains with "
                        "lora, full or freeze")
    if m.rm.center_rewards_coefficient is not None and m.rm.center_rewards_coefficient < 0:
        raise SpecError("method.rm.center_rewards_coefficient: must be 0 or more, or empty for off")


def _check_grpo(spec) -> None:
    g, t = spec.method.grpo, spec.train
    if not g.reward_funcs:
        raise SpecError("method.grpo.reward_funcs: name at least one reward function (a built-in: "
                        f"{', '.join(BUILTIN_REWARDS)}; or path/to/file.py:function)")
    for r in g.reward_funcs:
        r = str(r)
        if r not in BUILTIN_REWARDS and not (":" in r and r.split(":", 1)[0].endswith(".py") and r.split(":", 1)[1]):
            raise SpecError(f"method.grpo.reward_funcs: `{r}` is neither a built-in ({', '.join(BUILTIN_REWARDS)}) nor "
                            "`path/to/file.py:function`")
    if g.reward_weights is not None:
        if len(g.reward_weights) != len(g.reward_funcs):
            raise SpecError(f"method.grpo.reward_weights: {len(g.reward_weights)} weight(s) for {len(g.reward_funcs)} "
                            "reward function(s) in method.grpo.reward_funcs; give one weight per function, or leave it empty")
        try:  # the page's text box gives "0.7, 0.3"
            g.reward_weights = [float(w) for w in g.reward_weights if not isinstance(w, bool)]
        except (TypeError, ValueError):
            raise SpecError(f"method.grpo.reward_weights: expected numbers, got {g.reward_weights}") from None
    if g.num_generations < 2:
        raise SpecError("method.grpo.num_generations: must be at least 2 (answers are compared within a group)")
    batch = t.per_device_train_batch_size * t.gradient_accumulation_steps * max(spec.launch.nproc_per_node, 1)
    if batch % g.num_generations:
        raise SpecError(f"method.grpo.num_generations={g.num_generations} must divide train.per_device_train_batch_size "
                        f"x train.gradient_accumulation_steps x processes ({batch}): every prompt's group is generated "
                        "in one batch")
    if g.max_completion_length < 1:
        raise SpecError("method.grpo.max_completion_length: must be at least 1")
    if g.temperature <= 0:
        raise SpecError("method.grpo.temperature: must be greater than 0 (sampling is needed to compare answers)")
    if g.beta < 0:
        raise SpecError("method.grpo.beta: must be 0 or more")
    if g.length_target < 1:
        raise SpecError("method.grpo.length_target: must be at least 1")
    import re

    try:
        re.compile(g.format_regex)
    except re.error as e:
        raise SpecError(f"method.grpo.format_regex: not a valid regular expression ({e})") from None


# DPO on a few pairs (4-8 saved from the Chat tab) with LoRA: every step takes 2 pairs at full rate from the first
# (no warm-up), and enough steps that the margins rise in the curves (docs/methods.md, "DPO on a few pairs").
DPO_DEFAULTS = {"train.max_steps": 12, "train.learning_rate": 1.0e-3, "train.warmup_ratio": 0.0, "train.warmup_steps": 0,
                "train.per_device_train_batch_size": 2, "train.gradient_accumulation_steps": 1, "train.logging_steps": 1}
MIN_LEARNING_STEPS = 4  # optimizer steps at full rate, after the warm-up, below which a run is said too short to learn

STAGE_TABLE = {s.name: s for s in [
    Stage("sft", "instruction tuning on chats", ("chat",)),
    Stage("pt", "continued pretraining on plain text", ("text", "chat")),
    Stage("dpo", "preference pairs; also ORPO, SimPO, IPO", ("ranking",), "pairs", DpoSpec,
          "preference loss and reference model", "DPO / ORPO / SimPO", ("rewards/margins", "rewards/accuracies"), _check_dpo,
          defaults=DPO_DEFAULTS),
    Stage("kto", "answers labelled good or bad", ("kto", "ranking"), "labelled", KtoSpec, "KTO loss and reference model",
          "KTO", ("rewards/margins", "kl"), _check_kto),
    Stage("rm", "a reward model on preference pairs", ("ranking",), "pairs", RmSpec, "reward-model options",
          "Reward model", ("accuracy", "margin"), _check_rm),
    Stage("grpo", "reinforcement learning with reward functions", ("prompt", "chat"), "prompts", GrpoSpec,
          "reward functions and generation", "GRPO", ("reward", "reward_std", "kl", "rewards/*"), _check_grpo),
]}
STAGES = list(STAGE_TABLE)
PREFERENCE_STAGES = tuple(n for n, s in STAGE_TABLE.items() if s.rows)  # TRL's own trainers, on TRL rows


def too_short(spec, examples: int | None = None) -> str:
    """A line saying why the run learns little, or "": fewer than MIN_LEARNING_STEPS optimizer steps after the warm-up
    (`examples`: the rows the data gives, for a run that trains num_train_epochs; None: unknown, judged by max_steps)."""
    import math

    t = spec.train
    if t.max_steps > 0:
        steps = t.max_steps
    elif examples:
        batch = t.per_device_train_batch_size * t.gradient_accumulation_steps * max(spec.launch.nproc_per_node, 1)
        steps = math.ceil(math.ceil(examples / batch) * t.num_train_epochs)
    else:
        return ""
    warm = t.warmup_steps if t.warmup_steps > 0 else math.ceil(steps * t.warmup_ratio)
    if steps - warm >= MIN_LEARNING_STEPS:
        return ""
    stage = STAGE_TABLE.get(spec.method.stage)
    hint = ""
    if stage and stage.defaults.get("train.max_steps"):
        hint = (f" (the page's {stage.name} defaults: train.max_steps={stage.defaults['train.max_steps']}, "
                f"train.warmup_ratio={stage.defaults.get('train.warmup_ratio', 0)})")
    first = (" The first logged point is taken before any update, so it shows the start (for dpo: loss 0.6931, margins 0)."
             if stage and stage.rows else "")
    return (f"this run is too short to learn: {steps} optimizer step(s), {min(warm, steps)} of them warming up (the learning "
            f"rate rising from 0), fewer than {MIN_LEARNING_STEPS} at full rate. Raise train.max_steps or lower the warm-up"
            f"{hint}.{first}")


def validate(spec) -> None:
    """The stage's own fields, and what cannot go with it; raises SpecError naming the fields."""
    m, d = spec.method, spec.data
    st = m.stage
    if st not in PREFERENCE_STAGES:
        return
    if d.packing:
        raise SpecError(f"data.packing with method.stage={st}: {st} batches whole prompts and answers; set data.packing=false")
    if m.finetuning_type in ("prefix", "prompt", "ptuning", "ptuning_v2"):
        raise SpecError(f"method.finetuning_type={m.finetuning_type} with method.stage={st}: prompt-style adapters are not "
                        "supported by the preference and RL trainers; use lora, full, freeze, adalora or ia3")
    if d.train_on_prompt or d.mask_history:
        raise SpecError(f"data.train_on_prompt / data.mask_history with method.stage={st}: the {st} trainer scores the "
                        "answers only; set both to false")
    if STAGE_TABLE[st].check:
        STAGE_TABLE[st].check(spec)
