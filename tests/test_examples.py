"""Every shipped example spec loads and passes the pre-launch checks; every registered demo dataset passes `studio data check`.

    .venv/bin/python -m pytest -q tests/test_examples.py
"""
from __future__ import annotations

import pytest

from conftest import ROOT
from studio import spec as specmod

EXAMPLES = sorted((ROOT / "examples").rglob("*.yaml"))
SWEEPS = [p for p in EXAMPLES if "sweep" in specmod.read_yaml(p)]  # a `sweep:` section: checked through its first point


def _load(path):
    from studio.launch import sweep

    return sweep.plan(path, [])[2][0][1] if path in SWEEPS else specmod.load(path)


def test_there_is_an_example_for_every_finetuning_type():
    types = {_load(p).method.finetuning_type for p in EXAMPLES if _load(p).task == "train"}
    assert types == set(specmod.FINETUNING_TYPES)
    stages = {_load(p).method.stage for p in EXAMPLES if _load(p).task == "train"}
    assert stages == set(specmod.STAGES)


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.relative_to(ROOT / "examples").as_posix() for p in EXAMPLES])
def test_example_loads_and_says_how_to_run_it(path, monkeypatch, tmp_path):
    from studio.launch.preflight import preflight

    monkeypatch.chdir(ROOT)  # examples name paths relative to the repository root, as their first line runs them
    spec = _load(path)
    first = path.read_text(encoding="utf-8").splitlines()[0]
    assert first == f"# studio {spec.task} {path.relative_to(ROOT).as_posix()}", f"{path.name}: first line should give the command"
    assert specmod.load(None, [], base=specmod.to_dict(spec)) == spec  # round-trips through its own dict
    if spec.task == "train":
        spec.output_dir = str(tmp_path / "run")  # a run of the example left in runs/ is not what this checks
        preflight(spec)  # the datasets exist and suit the stage; this machine has what the method needs


def test_every_registered_dataset_passes_data_check(default_model_dir):
    from studio.model import models
    from studio.data import check, registry
    from studio.data.templates import Template

    template = Template("auto", models.load_tokenizer(str(default_model_dir)))
    results = check.check(ROOT / "data", None, None, template, 1024)
    assert [r.name for r in results] == list(registry.read_info(ROOT / "data"))
    for r in results:
        assert r.ok, f"{r.name}: {r.issues[:3]}"
        if r.kind in ("ranking", "kto", "prompt"):  # preference and RL data: no supervised tokens to count
            assert r.records > 0, r.name
            continue
        assert r.records > 0 and r.stats["examples"] > 0 and r.stats["trained_tokens"] > 0, r.name
