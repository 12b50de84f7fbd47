"""DeepSpeed presets by name: z0, z2, z2_offload, z3, z3_offload (or a path to a JSON config).

Values of "auto" are filled in by the trainer's DeepSpeed integration from the training arguments.
"""
from __future__ import annotations

import json
from pathlib import Path

from studio.spec import SpecError

_BASE = {
    "train_batch_size": "auto", "train_micro_batch_size_per_gpu": "auto", "gradient_accumulation_steps": "auto",
    "gradient_clipping": "auto", "bf16": {"enabled": "auto"}, "fp16": {"enabled": "auto"}, "zero_allow_untested_optimizer": True,
}


def preset(name: str) -> dict:
    stage = {"z0": 0, "z2": 2, "z2_offload": 2, "z3": 3, "z3_offload": 3}[name]
    zero = {"stage": stage}
    if stage >= 2:
        zero.update(overlap_comm=False, contiguous_gradients=True, reduce_bucket_size="auto")
    if stage == 3:
        zero.update(stage3_prefetch_bucket_size="auto", stage3_param_persistence_threshold="auto",
                    stage3_gather_16bit_weights_on_model_save=True)
    if name.endswith("offload"):
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": True}
        if stage == 3:
            zero["offload_param"] = {"device": "cpu", "pin_memory": True}
    return {**_BASE, "zero_optimization": zero}


def config_for(value: str) -> dict:
    if value in ("z0", "z2", "z2_offload", "z3", "z3_offload"):
        return preset(value)
    p = Path(value)
    if not p.is_file():
        raise SpecError(f"launch.deepspeed: {value} is not a preset (z0, z2, z2_offload, z3, z3_offload) and no such file")
    try:
        return json.loads(p.read_text())
    except json.JSONDecodeError as e:
        raise SpecError(f"launch.deepspeed: {p} line {e.lineno}: invalid JSON ({e.msg})") from None


def for_this_rank(value: str) -> dict:
    """The config for a rank about to start DeepSpeed. Ranks on the CPU talk over gloo: DeepSpeed's shared-memory
    all-reduce for CPU ranks is compiled with the C++ compiler on the first run in each environment (74 CPU-s on
    2 cores) and its ranks spin while they wait for each other (a 2-rank ZeRO-2 job took 3x the CPU time when other
    work shared the cores)."""
    from deepspeed import ops
    from deepspeed.accelerator import get_accelerator

    if get_accelerator().device_name() == "cpu":
        ops.__compatible_ops__["deepspeed_shm_comm"] = False  # read when DeepSpeed sets up its communication
    return config_for(value)
