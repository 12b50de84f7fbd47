"""The job spec's sections: one dataclass per section, each field with its help text (the only help text)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Union

from studio.spec.fields import FINETUNING_TYPES, OPTIMIZERS, SCHEDULERS, _f, _sub


@dataclass
class ModelSpec:
    name_or_path: str = _f("default", "Base model: `default` (the embedded SmolLM2-135M-Instruct), a local folder, or a hub id.")
    adapter: Optional[str] = _f(None, "A trained adapter folder or run folder to load on top of the base model.")
    template: str = _f("auto", "Prompt template: `auto` uses the tokenizer's chat template; built-ins: alpaca, vicuna, chatml, default.")
    quantization_bit: Optional[int] = _f(None, "Load the base model in 4 or 8 bits with bitsandbytes (QLoRA). Empty: no quantization.", choices=[None, 4, 8])
    quantization_type: str = _f("nf4", "4-bit data type: nf4 or fp4.", choices=["nf4", "fp4"])
    double_quantization: bool = _f(True, "Quantize the 4-bit quantization constants too (saves ~0.4 bit per weight).")
    trust_remote_code: bool = _f(False, "Allow model code from the model folder to run (only for models you trust).")


@dataclass
class DataSpec:
    dataset_dir: str = _f("data", "Folder that holds dataset_info.json and the dataset files.")
    dataset: list = _f(["identity"], "Training datasets: names from dataset_info.json; several are mixed.")
    eval_dataset: list = _f([], "Evaluation datasets (names from dataset_info.json), for eval loss during training or for `studio eval`.")
    val_size: float = _f(0.0, "Fraction (0-1) or count (>1) of training examples held out for eval loss.")
    max_samples: Optional[int] = _f(None, "Use at most this many examples from each dataset. Empty: all.")
    cutoff_len: int = _f(1024, "Maximum tokens per example; longer examples are cut (prompt first, then answer).")
    packing: bool = _f(False, "Pack several examples into one row (they cannot attend to each other) instead of padding each batch.")
    train_on_prompt: bool = _f(False, "Compute the loss on prompt tokens too, not only on assistant answers.")
    mask_history: bool = _f(False, "Compute the loss on the last assistant turn only (earlier turns are context).")
    seed_shuffle: bool = _f(True, "Shuffle the training examples (with train.seed).")


@dataclass
class LoraSpec:
    rank: int = _f(8, "LoRA rank r: the size of the low-rank update.")
    alpha: int = _f(16, "LoRA alpha: the update is scaled by alpha / rank (alpha / sqrt(rank) with rslora).")
    dropout: float = _f(0.0, "Dropout on the LoRA input.")
    target: Union[str, list] = _f("all-linear", "Modules that get LoRA, AdaLoRA or IA3: `all-linear` (for IA3: k_proj, v_proj, down_proj) or a list of module names (q_proj, v_proj, ...).")
    dora: bool = _f(False, "DoRA: weight-decomposed LoRA (a learned magnitude per output feature).")
    rslora: bool = _f(False, "rsLoRA: scale by alpha / sqrt(rank), stable at high ranks.")
    pissa: bool = _f(False, "PiSSA initialisation: start from the principal singular vectors of each weight.")
    loraplus_lr_ratio: Optional[float] = _f(None, "LoRA+: learning rate of B = this ratio x learning rate of A (16 is typical). Empty: off.")
    layers: Optional[list] = _f(None, "Only these layer indices get LoRA (LoRA-drop: spend adapters where they help). Empty: all layers.")
    modules_to_save: Optional[list] = _f(None, "Extra modules trained in full and saved with the adapter (e.g. lm_head, embed_tokens).")


@dataclass
class FreezeSpec:
    trainable_layers: int = _f(2, "Freeze tuning: train the last N decoder layers (negative: the first N).")
    trainable_modules: Optional[list] = _f(None, "Freeze tuning: train only parameters whose name contains one of these (e.g. mlp, self_attn). Empty: whole layers.")
    extra_modules: Optional[list] = _f(None, "Freeze tuning: also train these named modules (e.g. lm_head, norm).")


@dataclass
class PromptSpec:
    num_virtual_tokens: int = _f(16, "Prompt, prefix, P-tuning: number of virtual tokens learned.")
    encoder_hidden_size: int = _f(128, "P-tuning / prefix projection: hidden size of the prompt encoder.")
    init_text: Optional[str] = _f(None, "Prompt tuning: initialise the virtual tokens from this text. Empty: random.")


@dataclass
class AdaLoraSpec:
    init_rank: int = _f(12, "AdaLoRA: starting rank of every adapted matrix.")
    target_rank: int = _f(4, "AdaLoRA: average rank kept after pruning.")
    tinit: int = _f(0, "AdaLoRA: steps of warm-up before rank pruning starts.")
    tfinal: int = _f(0, "AdaLoRA: steps at the end with the final ranks fixed.")
    delta_t: int = _f(1, "AdaLoRA: steps between two rank updates.")


@dataclass
class MethodSpec:
    stage: str = _f("sft", "Training stage: sft (instruction tuning on chats) or pt (continued pretraining on plain text).", choices=["sft", "pt"])
    finetuning_type: str = _f("lora", "What is trained: lora, full, freeze, adalora, ia3, prefix, prompt, ptuning, ptuning_v2.", choices=FINETUNING_TYPES)
    lora: LoraSpec = _sub(LoraSpec, "LoRA options (also used by QLoRA).")
    freeze: FreezeSpec = _sub(FreezeSpec, "Freeze-tuning options.")
    prompt: PromptSpec = _sub(PromptSpec, "Prompt-style method options (prefix, prompt, ptuning, ptuning_v2).")
    adalora: AdaLoraSpec = _sub(AdaLoraSpec, "AdaLoRA options.")


@dataclass
class TrainSpec:
    learning_rate: float = _f(2.0e-4, "Peak learning rate.")
    num_train_epochs: float = _f(3, "Passes over the training data (ignored when max_steps > 0).")
    max_steps: int = _f(-1, "Stop after this many optimizer steps; -1 trains for num_train_epochs.")
    per_device_train_batch_size: int = _f(4, "Examples (or packed rows) per device per micro-batch.")
    gradient_accumulation_steps: int = _f(2, "Micro-batches summed before each optimizer step.")
    lr_scheduler_type: str = _f("cosine", "Learning-rate schedule after warm-up.", choices=SCHEDULERS)
    warmup_ratio: float = _f(0.0, "Fraction of the steps spent warming up the learning rate.")
    warmup_steps: int = _f(0, "Warm-up steps (overrides warmup_ratio when > 0).")
    weight_decay: float = _f(0.0, "Decoupled weight decay.")
    max_grad_norm: float = _f(1.0, "Clip the gradient norm to this value (0: no clipping).")
    optim: str = _f("adamw_torch", "Optimizer.", choices=OPTIMIZERS)
    compute_dtype: str = _f("auto", "Precision of the computation: auto (bf16 on GPUs that have it, else fp32), bf16, fp16, fp32.", choices=["auto", "bf16", "fp16", "fp32"])
    gradient_checkpointing: bool = _f(False, "Recompute activations in the backward pass: less memory, ~30% slower.")
    neftune_alpha: Optional[float] = _f(None, "NEFTune: noise added to embeddings during training (5 is typical). Empty: off.")
    logging_steps: int = _f(1, "Write a loss point every this many steps.")
    save_steps: int = _f(100, "Save a checkpoint every this many steps.")
    save_total_limit: Optional[int] = _f(3, "Keep at most this many checkpoints (oldest deleted). Empty: keep all.")
    eval_steps: Optional[int] = _f(None, "Compute eval loss every this many steps (needs eval_dataset or val_size). Empty: at the end only.")
    load_best_model_at_end: bool = _f(False, "Keep the checkpoint with the best metric_for_best_model as the run's adapter/model (needs eval_steps, and save_steps a multiple of it).")
    metric_for_best_model: str = _f("eval_loss", "The eval metric that decides the best checkpoint and early stopping (lower is better for a name ending in loss).")
    early_stopping_patience: Optional[int] = _f(None, "Stop when metric_for_best_model has not improved for this many evaluations (needs eval_steps). Empty: never.")
    seed: int = _f(42, "Random seed for data order and initialisation.")
    resume_from_checkpoint: Optional[str] = _f(None, "`auto`: continue from the last checkpoint in the run folder; or a checkpoint path.")
    report_to: str = _f("none", "Also log to: none, tensorboard, wandb, mlflow, swanlab (offline modes need no network).", choices=["none", "tensorboard", "wandb", "mlflow", "swanlab"])
    report_offline: bool = _f(True, "Keep wandb, mlflow and swanlab logs in the run folder (no network); false: send them to the service your environment configures.")
    num_threads: Optional[int] = _f(None, "CPU threads for torch. Empty: all cores.")


@dataclass
class EvalSpec:
    batch_size: int = _f(8, "Prompts generated together.")
    max_new_tokens: int = _f(128, "Longest answer generated.")
    do_sample: bool = _f(False, "Sample instead of greedy decoding.")
    temperature: float = _f(0.7, "Sampling temperature.")
    top_p: float = _f(0.9, "Nucleus sampling: keep the smallest token set with this probability.")
    top_k: int = _f(50, "Sample among the k most likely tokens.")
    seed: int = _f(42, "Seed for sampling.")
    compare: list = _f([], "Also evaluate these adapters or run folders on the same data (`base` for the bare base model).")
    compute_loss: bool = _f(True, "Also compute eval loss and perplexity on the references.")


@dataclass
class ExportSpec:
    export_dir: Optional[str] = _f(None, "Folder to write the export to. Empty: OUTPUT_DIR/export.")
    dtype: str = _f("fp16", "Weights dtype of the merged model.", choices=["fp32", "fp16", "bf16"])
    max_shard_size: str = _f("2GB", "Largest safetensors shard (e.g. 500MB, 2GB).")
    gguf: list = _f(["f16"], "GGUF files to write for llama.cpp and Ollama (f16, q8_0, bf16, f32; Llama-family models); empty for none.")
    verify: bool = _f(True, "Reload the export with plain transformers and compare its logits with base + adapter (and the GGUF files in llama.cpp when installed).")
    overwrite: bool = _f(False, "Replace an existing folder that is not an earlier export.")


@dataclass
class LaunchSpec:
    nproc_per_node: int = _f(1, "Processes (GPUs) per node; more than 1 runs torchrun.")
    nnodes: int = _f(1, "Number of machines.")
    node_rank: int = _f(0, "This machine's rank among nnodes.")
    master_addr: str = _f("127.0.0.1", "Address of node 0, reachable from every node.")
    master_port: Optional[int] = _f(None, "Port on node 0. Empty: a free port.")
    devices: Optional[str] = _f(None, "GPUs the job may use, e.g. `0,1` (sets CUDA_VISIBLE_DEVICES). Empty: all; `cpu`: none.")
    deepspeed: Optional[str] = _f(None, "DeepSpeed: a preset (z0, z2, z2_offload, z3, z3_offload) or a JSON config path. Empty: off.")


@dataclass
class JobSpec:
    task: str = _f("train", "What the job does: train, eval or export.", choices=["train", "eval", "export"])
    output_dir: str = _f("runs/identity_lora", "The run folder: the spec, events, log and results go here.")
    model: ModelSpec = _sub(ModelSpec, "Which model to start from.")
    data: DataSpec = _sub(DataSpec, "Which data, and how it becomes token batches.")
    method: MethodSpec = _sub(MethodSpec, "What is trained and how.")
    train: TrainSpec = _sub(TrainSpec, "Optimisation and checkpointing.")
    eval: EvalSpec = _sub(EvalSpec, "Generation and scoring (task eval).")
    export: ExportSpec = _sub(ExportSpec, "Merging and conversion (task export).")
    launch: LaunchSpec = _sub(LaunchSpec, "Processes, devices and DeepSpeed.")

    def __post_init__(self):
        from studio.spec.rules import validate

        validate(self)
