"""The job spec: defaults, overrides, errors that name the field, round trip."""
import pytest

from studio import spec as specmod
from studio.spec import SpecError


def test_defaults_match_the_documented_names():
    s = specmod.JobSpec()
    assert s.task == "train" and s.model.name_or_path == "default" and s.model.template == "auto"
    assert s.data.dataset == ["identity"] and s.data.cutoff_len == 1024 and s.data.packing is False
    assert s.method.stage == "sft" and s.method.finetuning_type == "lora" and s.method.lora.rank == 8
    assert s.train.learning_rate == 2e-4 and s.train.resume_from_checkpoint is None
    assert s.launch.nproc_per_node == 1 and s.launch.deepspeed is None


def test_overrides_parse_yaml_values():
    s = specmod.load(None, ["train.max_steps=10", "data.dataset=[a, b]", "model.quantization_bit=4", "method.lora.target=q_proj,v_proj"])
    assert s.train.max_steps == 10 and s.data.dataset == ["a", "b"] and s.model.quantization_bit == 4
    assert s.method.lora.target == "q_proj,v_proj"


@pytest.mark.parametrize("override, words", [
    (["train.max_stepz=3"], ["train.max_stepz", "train.max_steps"]),
    (["nonsense=1"], ["nonsense"]),
    (["method.finetuning_type=lorax"], ["method.finetuning_type", "lora", "freeze"]),
    (["train.learning_rate=fast"], ["train.learning_rate", "number"]),
    (["train.per_device_train_batch_size=0"], ["train.per_device_train_batch_size"]),
    (["model.quantization_bit=4", "method.finetuning_type=full"], ["model.quantization_bit", "finetuning_type"]),
    (["data.packing=maybe"], ["data.packing", "true or false"]),
])
def test_errors_name_the_field(override, words):
    with pytest.raises(SpecError) as e:
        specmod.load(None, override)
    for w in words:
        assert w in str(e.value)


def test_file_errors_name_the_file_and_line(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("task: train\nmodel: {name_or_path: default\n")
    with pytest.raises(SpecError, match=r"bad.yaml.*line"):
        specmod.load(p)
    p.write_text("task: train\ntrain:\n  epochs: 3\n")
    with pytest.raises(SpecError, match=r"bad.yaml: unknown key `train.epochs`"):
        specmod.load(p)


def test_dump_load_round_trip(tmp_path):
    s = specmod.load(None, ["train.max_steps=7", "method.lora.layers=[0, 1]", "launch.devices=0,1"])
    p = specmod.dump(s, tmp_path / "spec.yaml")
    assert specmod.load(p) == s


def test_every_field_has_help():
    import dataclasses

    def walk(cls, prefix=""):
        for f in dataclasses.fields(cls):
            assert f.metadata.get("help"), f"{prefix}{f.name} has no help"
            tp = specmod.type_hints(cls)[f.name]
            if specmod._is_section(tp):
                walk(tp, f"{prefix}{f.name}.")

    walk(specmod.JobSpec)
    assert "learning rate" in specmod.field_help("train.learning_rate").lower()
