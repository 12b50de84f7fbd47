"""The training stages in the child: one module per stage (its TRL config and trainer) on one base (base.py).

    get("dpo")  -> the dpo module's STAGE: data, model, method, config, trainer for method.stage=dpo

What a stage trains on, its options and what the page plots are its row in the stage table
(studio/spec/stages.py); this package holds only what runs in the training child.
"""
from __future__ import annotations

import importlib

from studio.train.stages.base import TrainStage


def get(name: str) -> TrainStage:
    """The stage `name` (a method.stage value) as the training child runs it."""
    return importlib.import_module(f"studio.train.stages.{name}").STAGE
