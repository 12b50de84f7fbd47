"""Every rule checked before a job starts, the same for the CLI and the page.

    preflight(spec)            # raises one error that lists every problem (SpecError, or the single error as it is)
    problems(spec)             # the same problems as a list of messages

The rules: the spec's own values (spec.validate, already run when the spec was built), the output folder (a job
running in it; a run of another task or, for training, a run that is not being resumed), the launch settings (DeepSpeed config), and each task's own: the datasets exist and suit the stage
and the machine suits the method (train), the samples and models to compare (eval), the source and the target
folder (export). Busy devices refuse nothing: the job waits its turn (launch/queue.py).
"""
from __future__ import annotations

from pathlib import Path

from studio import spec as specmod
from studio.errors import is_user_error
from studio.run import status as runs
from studio.spec.tasks import TASK_TABLE


def preflight(spec: specmod.JobSpec, runs_root: str | Path | None = None) -> None:
    found = _collect(spec, runs_root)
    if len(found) == 1:
        raise found[0]
    if found:
        raise specmod.SpecError(f"{len(found)} problems:\n" + "\n".join(f"- {e}" for e in found))


def problems(spec: specmod.JobSpec, runs_root: str | Path | None = None) -> list[str]:
    return [str(e) for e in _collect(spec, runs_root)]


def _collect(spec, runs_root) -> list[Exception]:
    found = []
    for rule in (_output_dir, _launch, *TASK_RULES.get(spec.task, ())):
        try:
            rule(spec, runs_root)
        except Exception as e:
            if not is_user_error(e):
                raise
            found.append(e)
    return found


RUN_NOUN = {**{t.name: t.noun for t in TASK_TABLE.values()}, "?": "a run whose spec cannot be read"}


def _output_dir(spec, runs_root) -> None:
    out = Path(spec.output_dir)
    if spec.launch.nnodes > 1 and spec.launch.node_rank > 0:
        return  # node 1, 2 ... join node 0's run folder
    if runs.is_running(out):
        raise specmod.SpecError(f"output_dir: {spec.output_dir} has a job running; choose another output folder or stop it first")
    if runs.status(out) == "queued":
        raise specmod.SpecError(f"output_dir: {spec.output_dir} has a job waiting in the queue; choose another output folder "
                                "or cancel it first (studio queue cancel)")
    if not (out / "spec.yaml").is_file():
        return
    try:
        task = specmod.load(out / "spec.yaml").task
    except specmod.SpecError:
        task = "?"
    if task != spec.task:
        held = RUN_NOUN.get(task, f"a {task} run")
        raise specmod.SpecError(f"output_dir: {spec.output_dir} holds {held}, which this {spec.task} job would replace; "
                                f"choose another output_dir, e.g. output_dir=runs/{spec.task}_1")
    if spec.task == "train" and not spec.train.resume_from_checkpoint and spec.launch.nnodes == 1:  # nodes share one folder
        raise specmod.SpecError(f"output_dir: {spec.output_dir} already holds a run; choose another name, clear the field for a "
                                "new automatic name, or set train.resume_from_checkpoint=auto to continue it")


def _launch(spec, runs_root) -> None:
    """A DeepSpeed JSON file that is missing or broken would only fail inside the child."""
    if spec.task == "train" and spec.launch.deepspeed:
        from studio.train.deepspeed import config_for

        config_for(spec.launch.deepspeed)


def _train_data(spec, runs_root) -> None:
    from studio.data import encode, registry

    info = registry.read_info(spec.data.dataset_dir)
    for name in list(spec.data.dataset) + list(spec.data.eval_dataset):
        encode.usable(registry.entry(spec.data.dataset_dir, name, info), spec.method.stage)


def _train_method(spec, runs_root) -> None:
    from studio.model import methods

    methods.preflight(spec)  # packages and hardware the method and options need


def _train_stage(spec, runs_root) -> None:
    from studio.train import stages

    stages.get(spec.method.stage).preflight(spec)  # GRPO: the reward files exist and define their functions


def _eval(spec, runs_root) -> None:
    from studio.evaluate import prefscore
    from studio.evaluate.job import plan
    from studio.evaluate.predictions import eval_datasets, read_samples

    entries = plan(spec)
    if prefscore.is_pair_eval(spec):
        prefscore.pair_runs(spec, entries)
    elif eval_datasets(spec):
        read_samples(spec)
    elif not spec.eval.benchmarks:
        raise specmod.SpecError("nothing to evaluate: name datasets to predict on (data.eval_dataset) or benchmarks (eval.benchmarks)")
    if spec.eval.benchmarks:
        from studio.evaluate import scorecard

        scorecard.check(spec)
    if spec.eval.judge != "none":
        from studio.evaluate import judging

        judging.check(spec, entries)


def _train_benchmarks(spec, runs_root) -> None:
    if spec.train.benchmarks:
        from studio.evaluate import scorecard

        scorecard.check(spec)


def _export(spec, runs_root) -> None:
    from studio.export import quant
    from studio.model.source import find_source, target_dir

    target_dir(spec, find_source(spec))
    quant.check(spec.export.gguf)  # k-quants need llama.cpp's quantizer


def _generate(spec, runs_root) -> None:
    """The source dataset, the output name, the local generator's model."""
    from studio.data import registry
    from studio.data.encode import usable
    from studio.generate import store
    from studio.model.source import resolve_spec

    usable(registry.entry(spec.data.dataset_dir, spec.generate.source), "sft")
    store.check_output(spec, spec.output_dir)
    if spec.generate.generator == "local":
        resolve_spec(spec.model)


def _merge(spec, runs_root) -> None:
    from studio.merge import plan

    plan(spec)  # every adapter: LoRA, on this base, of ranks the method takes


TASK_RULES = {"train": (_train_data, _train_method, _train_stage, _train_benchmarks), "eval": (_eval,), "export": (_export,),
              "generate": (_generate,), "merge": (_merge,)}
