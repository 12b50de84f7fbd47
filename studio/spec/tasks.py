"""The jobs: one table that the spec, the launcher and the preflight read.

A task is a row here (its child module, the name of its runs) and a package studio/<package>/ with job.py (the
child, `python -m studio.<package>.job RUN_DIR`), its spec section in sections.py, its verb in studio/cli/, and its
rules in studio/launch/preflight.py's TASK_RULES.
"""
from __future__ import annotations

from dataclasses import dataclass

__all__ = ["TASKS", "TASK_TABLE", "Task"]


@dataclass(frozen=True)
class Task:
    name: str  # JobSpec.task
    module: str  # the child process: python -m <module> RUN_DIR
    noun: str  # what its run folder is called in messages


TASK_TABLE = {t.name: t for t in [
    Task("train", "studio.train.job", "a training run"),
    Task("eval", "studio.evaluate.job", "an evaluation"),
    Task("export", "studio.export.job", "an export run"),
    Task("generate", "studio.generate.job", "a data-generation run"),
    Task("serve", "studio.serve.job", "a server's run"),
    Task("merge", "studio.merge.job", "a merge run"),
]}
TASKS = list(TASK_TABLE)
