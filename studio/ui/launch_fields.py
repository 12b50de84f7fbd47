"""Train tab fields for devices, processes and DeepSpeed, and the memory estimate shown before Start.

The train tab puts NAMES in a group with `special()` as their widgets, then calls `wire()` once its
`spec_from` exists. GPU detection runs in a thread at build time (nvidia-smi, or torch in a child process)
and fills the device list when the page loads.
"""
from __future__ import annotations

import threading

import gradio as gr

from studio import hardware
from studio.launch import estimate
from studio.launch import command as launch
from studio import spec as specmod
from studio.ui import form

NAMES = ["launch.devices", "launch.nproc_per_node", "launch.deepspeed", "launch.nnodes", "launch.node_rank",
         "launch.master_addr", "launch.master_port"]
DEEPSPEED = [("off", ""), ("ZeRO-0 (DeepSpeed engine, no sharding)", "z0"), ("ZeRO-2 (shard gradients and optimizer)", "z2"),
             ("ZeRO-2 + optimizer offload to CPU", "z2_offload"), ("ZeRO-3 (shard weights too)", "z3"),
             ("ZeRO-3 + weights and optimizer offload to CPU", "z3_offload")]
# what the estimate depends on: a change to any of these recomputes it
ESTIMATE_INPUTS = ["model.name_or_path", "model.quantization_bit", "method.finetuning_type", "method.lora.rank",
                   "train.per_device_train_batch_size", "data.cutoff_len", "train.compute_dtype", "train.gradient_checkpointing",
                   "launch.nproc_per_node", "launch.nnodes", "launch.deepspeed", "launch.devices", "data.packing",
                   "model.attn_implementation", "train.liger_kernel", "data.group_by_length"]


def device_choices(gpus=None) -> list[tuple[str, str]]:
    gpus = hardware.detect() if gpus is None else gpus
    default = ("every GPU", "") if gpus else ("default (no GPU found: the CPU)", "")
    return [default] + hardware.choices(gpus)


def special() -> dict:
    threading.Thread(target=hardware.detect, daemon=True).start()  # ready by the time the page loads
    return {
        "launch.devices": gr.Dropdown(choices=device_choices(()), value="", allow_custom_value=True, label="devices",
                                      info=specmod.field_help("launch.devices") + " Several GPUs: type them, e.g. 0,2.",
                                      elem_id=form.elem_id("launch.devices"), render=False),
        "launch.deepspeed": gr.Dropdown(choices=DEEPSPEED, value="", allow_custom_value=True, label="deepspeed",
                                        info=specmod.field_help("launch.deepspeed"), elem_id=form.elem_id("launch.deepspeed"),
                                        render=False),
    }


def plan_text(spec: specmod.JobSpec) -> str:
    """What the job will use on this machine (attention kernel, batching, precision), as studio.model.plan decides."""
    from studio.model import plan

    try:
        return "**will use:** " + plan.plan(spec, hardware.Hardware.light(spec.launch.devices)).text()
    except specmod.SpecError as e:
        return f"**will not start:** {e}"


def estimate_text(spec: specmod.JobSpec) -> str:
    est = estimate.estimate(spec)
    if est is None:
        return f"memory estimate: no config.json for `{spec.model.name_or_path}` on this machine yet  \n" + plan_text(spec)
    return "**memory estimate:** " + est.text().replace("\n", "  \n") + "  \n" + plan_text(spec)


def command_text(spec: specmod.JobSpec) -> str:
    """The launch command(s) as comment lines for the Preview box."""
    return "\n".join("#   " + line if not line.startswith("#") else line for line in launch.describe(spec).splitlines())


def wire(ctx, fields: dict, form_inputs: set, spec_from, box) -> None:
    """Recompute the estimate in `box` when an input changes; fill the device list on page load."""
    def on_change(data):
        try:
            return estimate_text(spec_from(data, auto_dir=False))
        except specmod.SpecError as e:
            return f"memory estimate: {e}"

    for name in ESTIMATE_INPUTS:
        comp = fields.get(name) or ctx.top.get(name)
        if comp is not None:
            comp.change(on_change, form_inputs, box, show_progress="hidden")
    ctx.demo.load(lambda: gr.update(choices=device_choices()), None, fields["launch.devices"])
    ctx.demo.load(on_change, form_inputs, box, show_progress="hidden")
