"""What a CPU can check of the GPU paths: collectives on the rank's device, each rank's quantized model on its own
GPU, the plan (attention kernel, batching, precision, Liger) and packing into rows without a varlen kernel."""
from __future__ import annotations

import types

import pytest
import torch

from studio.model import plan as planmod
from studio import spec as specmod
from studio.hardware import Hardware

H100 = Hardware(cuda=True, name="NVIDIA H100 80GB HBM3", capability=9.0, flash_attn=True)
T4 = Hardware(cuda=True, name="Tesla T4", capability=7.5)
CPU = Hardware()


def test_stop_flag_is_reduced_on_the_ranks_device(tmp_path, monkeypatch):
    """NCCL refuses CPU tensors: the flag follows the trainer's args.device, and a gloo group still reduces it."""
    import torch.distributed as dist

    from studio.run import events as ev
    from studio.train import job as train

    assert train._flag_tensor(True, torch.device("meta")).device.type == "meta"
    assert train._flag_tensor(False).device.type == "cpu"
    seen = []
    monkeypatch.setattr(train, "_dist_any", lambda flag, device=None: seen.append(device) or flag)
    cb = train.make_callback(ev.EventWriter(tmp_path), tmp_path, {})
    args = types.SimpleNamespace(device=torch.device("meta"))
    control = types.SimpleNamespace(should_save=False, should_training_stop=False)
    cb.on_step_end(args, None, control)
    assert seen == [torch.device("meta")]
    monkeypatch.undo()

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1)
    try:
        assert train._dist_any(True, torch.device("cpu")) is True and train._dist_any(False, "cpu") is False
    finally:
        dist.destroy_process_group()


def test_quantized_model_goes_to_the_ranks_own_gpu():
    assert planmod.local_device_map(True, {"LOCAL_RANK": "1"}) == {"": 1}
    assert planmod.local_device_map(True, {}) == {"": 0}
    assert planmod.local_device_map(False, {"LOCAL_RANK": "1"}) == {"": "cpu"}


def _spec(*over):
    return specmod.load(None, ["data.dataset=[identity]", *over])


def test_plan_picks_the_fastest_installed_kernel_and_says_so():
    p = planmod.plan(_spec("data.packing=true"), H100)
    assert p.attn == "flash_attention_2" and not p.packed_rows and p.dtype == "bf16" and p.tf32
    assert p.text() == "on NVIDIA H100 80GB HBM3: packing (varlen, no masked attention) with flash attention 2, bf16 + TF32 matmuls"
    assert planmod.plan(_spec("data.packing=true"), Hardware(cuda=True, capability=9.0, flash_attn=True, flash_attn_3=True)).attn == "flash_attention_3"
    p = planmod.plan(_spec("data.packing=true"), T4)  # no flash-attn: rows of cutoff_len, not one giant masked row
    assert p.attn == "sdpa" and p.packed_rows and p.dtype == "fp32" and not p.tf32 and "no varlen kernel" in p.text()
    p = planmod.plan(_spec(), CPU)  # the CPU default: padded batches grouped by length
    assert p.attn == "sdpa" and p.group_by_length and not p.packed_rows and p.dtype == "fp32"
    assert p.text() == "on CPU: padded batches grouped by length with SDPA attention, fp32"
    assert not planmod.plan(_spec("data.group_by_length=false"), CPU).group_by_length
    assert planmod.plan(_spec("data.packing=true", "model.attn_implementation=flex_attention"), CPU).batching.startswith("packing (varlen")
    assert planmod.plan(_spec("method.finetuning_type=prompt"), H100).group_by_length  # prompt-style: never packed


@pytest.mark.parametrize("over, hw, words", [
    (["model.attn_implementation=flash_attention_2"], CPU, "needs a CUDA GPU"),
    (["model.attn_implementation=flash_attention_2"], T4, "flash_attn` package is not installed"),
    (["train.liger_kernel=true"], CPU, "CUDA GPUs only"),
    (["train.liger_kernel=true"], H100, "pip install liger-kernel"),
])
def test_plan_refuses_what_the_hardware_lacks(over, hw, words):
    with pytest.raises(specmod.SpecError, match="model.attn_implementation|train.liger_kernel") as e:
        planmod.plan(_spec(*over), hw)
    assert words in str(e.value)
    assert planmod.plan(_spec("train.liger_kernel=true"), Hardware(cuda=True, capability=9.0, liger=True)).liger


def test_liger_on_a_cpu_job_is_refused_before_start():
    from studio.model import methods

    with pytest.raises(specmod.SpecError, match="train.liger_kernel: Liger's Triton kernels run on CUDA GPUs only"):
        methods.preflight(_spec("train.liger_kernel=true", "launch.devices=cpu"))
    with pytest.raises(specmod.SpecError, match="model.attn_implementation"):
        specmod.load(None, ["model.attn_implementation=flash"])


def test_trainer_args_follow_the_plan(tmp_path):
    from studio.train.stages.sft import sft_config

    assert sft_config(_spec(), tmp_path, False).train_sampling_strategy == "group_by_length"
    assert sft_config(_spec("data.group_by_length=false"), tmp_path, False).train_sampling_strategy == "random"
    args = sft_config(_spec("data.packing=true"), tmp_path, False)
    assert args.packing and args.train_sampling_strategy == "random" and not args.use_liger_kernel


def test_packed_rows_keep_examples_apart(tiny_model):
    """Without a varlen kernel, each packed bin is its own row; no example attends to another or to padding."""
    from transformers import AutoModelForCausalLM

    from studio.data.packed_rows import PackedRowsCollator

    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32, attn_implementation="sdpa").eval()
    torch.manual_seed(0)
    a, b, c = (torch.randint(10, 1000, (n,)).tolist() for n in (7, 12, 5))
    rows = [{"input_ids": a + b, "labels": a + b, "seq_lengths": [7, 12]}, {"input_ids": c, "labels": c, "seq_lengths": [5]}]
    batch = PackedRowsCollator(pad_token_id=0)(rows)
    assert batch["input_ids"].shape == (2, 19) and "attention_mask" not in batch
    assert batch["position_ids"][0].tolist() == list(range(7)) + list(range(12))
    labels = batch["labels"]
    assert labels[0, 0] == -100 and labels[0, 7] == -100 and labels[0, 1] == a[1] and (labels[1, 5:] == -100).all()
    with torch.no_grad():
        out = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False).logits
        for row, start, x in ((0, 0, a), (0, 7, b), (1, 0, c)):
            alone = model(input_ids=torch.tensor([x])).logits[0]
            assert torch.allclose(out[row, start:start + len(x)], alone, atol=1e-4), "an example attended across a boundary"


def test_gpu_check_lists_every_path_with_its_command(tmp_path):
    """The check script's dry run (any machine) names every GPU path and the exact command; without a GPU it says so."""
    import subprocess
    import sys

    from conftest import ROOT

    r = subprocess.run([sys.executable, str(ROOT / "bench" / "gpu_check.py"), "--dry-run", "--work", str(tmp_path)],
                       capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    for words in ("LoRA bf16, padded", "LoRA bf16, packed", "QLoRA 4-bit", "QLoRA 8-bit", "full bf16", "freeze", "prompt-style",
                  "ZeRO-2", "ZeRO-3", "resume", "Abort leaves no process", "batch 1 vs 32", "chat streaming",
                  "export: merge, verify, GGUF", "memory estimate", "MFU (6N), 0.5B", "MFU (6N), 1.5B"):
        assert words in r.stdout, words
    assert r.stdout.count(f"-m studio train {tmp_path / 'job.yaml'}") >= 12 and "launch.deepspeed=z3" in r.stdout
    assert "-m studio eval" in r.stdout and "eval.batch_size=32" in r.stdout and "-m studio export" in r.stdout
    if not torch.cuda.is_available():
        r = subprocess.run([sys.executable, str(ROOT / "bench" / "gpu_check.py"), "--work", str(tmp_path)],
                           capture_output=True, text=True, timeout=120, cwd=ROOT)
        assert r.returncode == 2 and "needs a CUDA GPU" in r.stderr and "--dry-run" in r.stderr and "Traceback" not in r.stderr


def test_train_tab_shows_the_plan_next_to_the_memory_estimate():
    from studio.ui import launch_fields

    text = launch_fields.estimate_text(_spec("launch.devices=cpu"))
    assert "GiB per GPU" in text and "**will use:** on CPU: padded batches grouped by length with SDPA attention, fp32" in text
    assert "**will not start:** train.liger_kernel" in launch_fields.estimate_text(_spec("launch.devices=cpu", "train.liger_kernel=true"))


def test_length_groups_are_cut_for_the_global_batch():
    """1 process x batch 4 and 2 processes x batch 2 draw the same order; every global batch has similar lengths."""
    from datasets import Dataset

    from studio.data.grouping import sampler

    lengths = [(i * 37) % 200 + 5 for i in range(64)]
    ds = Dataset.from_dict({"input_ids": [[1] * n for n in lengths]})

    def order(per_device, world):
        args = types.SimpleNamespace(per_device_train_batch_size=per_device, gradient_accumulation_steps=2, world_size=world,
                                     data_seed=None, seed=42)
        return list(sampler(types.SimpleNamespace(args=args, train_dataset=ds)))

    one, two = order(4, 1), order(2, 2)
    assert one == two and sorted(one) == list(range(64)) and one != list(range(64))
    spread = sum(max(lengths[i] for i in one[k:k + 4]) - min(lengths[i] for i in one[k:k + 4]) for k in range(0, 64, 4))
    assert spread < 0.5 * sum(max(lengths[k:k + 4]) - min(lengths[k:k + 4]) for k in range(0, 64, 4))  # less padding than unsorted
