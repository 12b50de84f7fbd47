"""The job spec's sections: one dataclass per section, each field with its help text (the only help text)."""
from __future__ import annotations

from dataclasses import dataclass, make_dataclass
from typing import Optional, Union

from studio.spec.fields import ATTN_IMPLEMENTATIONS, FINETUNING_TYPES, MERGE_METHODS, OPTIMIZERS, SCHEDULERS, _f, _sub
from studio.spec.stages import STAGE_TABLE, STAGES
from studio.spec.tasks import TASKS


@dataclass
class ModelSpec:
    name_or_path: str = _f("default", "Base model: `default` (the embedded SmolLM2-135M-Instruct), a local folder, or a hub id.")
    adapter: Optional[str] = _f(None, "A trained adapter folder or run folder to load on top of the base model.")
    template: str = _f("auto", "Prompt template: `auto` uses the tokenizer's chat template; built-ins: alpaca, vicuna, chatml, default.")
    quantization_bit: Optional[int] = _f(None, "Load the base model in 4 or 8 bits with bitsandbytes (QLoRA). Empty: no quantization.", choices=[None, 4, 8])
    quantization_type: str = _f("nf4", "4-bit data type: nf4 or fp4.", choices=["nf4", "fp4"])
    double_quantization: bool = _f(True, "Quantize the 4-bit quantization constants too (saves ~0.4 bit per weight).")
    attn_implementation: str = _f("auto", "Attention kernel: auto (FlashAttention 3/2 on a GPU when the flash-attn package is installed, else SDPA), eager, sdpa, flash_attention_2, flash_attention_3, flex_attention.", choices=ATTN_IMPLEMENTATIONS)
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
    group_by_length: bool = _f(True, "Without packing: put examples of similar length in the same batch (less padding, faster; the order stays random across batches).")
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
class _MethodBase:
    stage: str = _f("sft", "Training stage: " + ", ".join(f"{s.name} ({s.help})" for s in STAGE_TABLE.values()) + ".",
                    choices=STAGES)
    finetuning_type: str = _f("lora", "What is trained: lora, full, freeze, adalora, ia3, prefix, prompt, ptuning, ptuning_v2.", choices=FINETUNING_TYPES)
    lora: LoraSpec = _sub(LoraSpec, "LoRA options (also used by QLoRA).")
    freeze: FreezeSpec = _sub(FreezeSpec, "Freeze-tuning options.")
    prompt: PromptSpec = _sub(PromptSpec, "Prompt-style method options (prefix, prompt, ptuning, ptuning_v2).")
    adalora: AdaLoraSpec = _sub(AdaLoraSpec, "AdaLoRA options.")


# each stage with options adds its section, method.<stage>, from the stage table
MethodSpec = make_dataclass("MethodSpec", [(s.name, s.section, _sub(s.section, f"Stage {s.name}: {s.section_help}."))
                                           for s in STAGE_TABLE.values() if s.section], bases=(_MethodBase,))
MethodSpec.__module__ = __name__


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
    liger_kernel: bool = _f(False, "Liger kernels (fused RMSNorm, RoPE, SwiGLU) on a CUDA GPU; needs the liger-kernel package. Not on the CPU.")
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
    benchmarks: list = _f([], "After training, score the finished run and its base model (once, cached) on these benchmarks "
                              "(eval.benchmarks' names; eval.benchmark_* settings apply); the scores join the run's results.")


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
    benchmarks: list = _f([], "Benchmarks every model is scored on by lm-evaluation-harness: task, group or tag names (studio_pack: the "
                              "shipped offline pack; mmlu, gsm8k, arc_easy, hellaswag, ifeval, ... where the hub is reachable).")
    benchmark_dirs: list = _f([], "Folders of your own benchmark tasks (lm-eval's YAML task format over json/jsonl/csv files), beside the shipped pack.")
    num_fewshot: Optional[int] = _f(None, "Benchmarks: worked examples put before each question. Empty: each task's own.")
    benchmark_limit: Optional[float] = _f(None, "Benchmarks: questions per task, a count (or a fraction below 1). Empty: all.")
    benchmark_batch_size: int = _f(8, "Benchmarks: requests scored together (lm-eval's batch size).")
    chat_template: bool = _f(True, "Benchmarks: put each question in the model's chat template (what chat-trained runs expect).")
    judge: str = _f("none", "Judge the models' answers on the eval datasets: pairwise (each model against judge_against, in both orders) "
                            "or rubric (each answer scored 1-10).", choices=["none", "pairwise", "rubric"])
    judge_against: Optional[str] = _f(None, "Pairwise: the model the others are judged against (`base`, or a compared run's name). Empty: the first model.")
    judge_model: str = _f("default", "The judge: a model the studio loads (`default`, a folder, a hub id, a run folder), or `endpoint`.")
    judge_base_url: Optional[str] = _f(None, "judge_model endpoint: the OpenAI-compatible server's base URL, e.g. http://127.0.0.1:8000/v1.")
    judge_endpoint_model: Optional[str] = _f(None, "judge_model endpoint: the model name the server expects.")
    judge_api_key_env: Optional[str] = _f(None, "judge_model endpoint: NAME of the environment variable that holds the API key (never written to the run folder). Empty: no key.")
    judge_retries: int = _f(2, "Judge: asks again after a failed request or a reply without a verdict, before the item counts as failed.")
    judge_max_new_tokens: int = _f(192, "Judge: longest reply (the reason and the verdict).")


@dataclass
class ExportSpec:
    export_dir: Optional[str] = _f(None, "Folder to write the export to. Empty: OUTPUT_DIR/export.")
    dtype: str = _f("fp16", "Weights dtype of the merged model.", choices=["fp32", "fp16", "bf16"])
    max_shard_size: str = _f("2GB", "Largest safetensors shard (e.g. 500MB, 2GB).")
    gguf: list = _f(["f16"], "GGUF files to write for llama.cpp and Ollama: q4_k_m (what Ollama users run; the Modelfile points at it), "
                    "f16, q8_0, q5_k_m, q6_k, bf16, f32 (Llama, Mistral, Qwen2/2.5, Qwen3 models; k-quants need llama-cpp-python); empty for none.")
    verify: bool = _f(True, "Reload the export with plain transformers and compare its logits with base + adapter (and the GGUF files in llama.cpp when installed).")
    overwrite: bool = _f(False, "Replace an existing folder that is not an earlier export.")


OUT_OF_SCOPE = ["image", "images", "graph", "graphs", "picture", "pictures", "file", "files", "map", "maps", "draw", "plot",
                "go to", "video", "audio", "music", "flowchart", "diagram"]


@dataclass
class GenerateSpec:
    mode: str = _f("self_instruct", "self_instruct: grow new instructions from seed tasks, then write their inputs and outputs; "
                   "answer: fill in (or replace) the outputs of an existing dataset's prompts with the generator's answers.",
                   choices=["self_instruct", "answer"])
    source: str = _f("seed_tasks", "Dataset (a name in data.dataset_dir/dataset_info.json): the seed tasks (self_instruct) or the prompts to answer (answer).")
    output_dataset: str = _f("generated", "Name the result is registered under in dataset_info.json; the file is DATASET_DIR/<name>.json (alpaca format).")
    overwrite: bool = _f(False, "Replace an existing dataset of that name (a restart of the same run folder may always replace its own).")
    num_instructions: int = _f(40, "self_instruct: new instructions to keep (seed tasks not counted).")
    num_prompt_instructions: int = _f(3, "self_instruct: example instructions shown in each request (sampled from seeds and kept ones).")
    instructions_per_request: int = _f(8, "self_instruct: new instructions asked for in each request.")
    batch_size: int = _f(8, "Requests per round: prompts generated together by the local model, or sent together to the endpoint.")
    max_rounds: int = _f(30, "self_instruct: stop after this many rounds of instruction requests even if fewer instructions were kept.")
    similarity_threshold: float = _f(0.7, "Drop an instruction whose ROUGE-L F-measure against any kept or seed instruction is at least this (0-1).")
    out_of_scope_words: list = _f(OUT_OF_SCOPE, "Drop instructions that mention these words or phrases (what a text model cannot do); whole words, any case.")
    min_words: int = _f(3, "Drop instructions with fewer words than this (Chinese text is counted in words, as the metrics cut it).")
    max_words: int = _f(150, "Drop instructions with more words than this.")
    replace_outputs: bool = _f(False, "answer: also replace outputs the dataset already has (false: only fill in empty ones).")
    max_new_tokens: int = _f(256, "Longest text generated per request.")
    temperature: float = _f(0.7, "Sampling temperature (0: greedy).")
    top_p: float = _f(0.95, "Nucleus sampling: keep the smallest token set with this probability.")
    seed: int = _f(42, "Seed for sampling and for choosing the example instructions.")
    generator: str = _f("local", "Who writes: local (model.name_or_path with model.adapter, batched on this machine) or endpoint (an OpenAI-compatible server).",
                        choices=["local", "endpoint"])
    base_url: Optional[str] = _f(None, "endpoint: the server's base URL, e.g. http://127.0.0.1:8000/v1 (POST BASE_URL/chat/completions).")
    endpoint_model: Optional[str] = _f(None, "endpoint: the model name the server expects.")
    api_key_env: Optional[str] = _f(None, "endpoint: NAME of the environment variable that holds the API key (the key itself is never written to the run folder). Empty: no key.")
    concurrency: int = _f(4, "endpoint: requests in flight at once.")
    retries: int = _f(3, "endpoint: retries of a failed request (with exponential backoff) before it counts as failed.")
    timeout: float = _f(120.0, "endpoint: seconds to wait for one answer.")


@dataclass
class MergeSpec:
    adapters: list = _f([], "LoRA adapters to merge, two or more, all trained on model.name_or_path: run folders, adapter folders or checkpoints.")
    weights: list = _f([], "One weight per adapter (negative subtracts); empty: 1 for each.")
    method: str = _f("cat", "How (PEFT's add_weighted_adapter): cat (exact: the weighted sum of the adapters, rank = sum of ranks), "
                     "linear (average A and B: same ranks, approximate), ties / dare_ties / dare_linear / magnitude_prune "
                     "(prune to `density`, TIES resolves sign conflicts), svd and *_svd (on the full update, cut to svd_rank).",
                     choices=MERGE_METHODS)
    density: float = _f(0.5, "ties, dare, magnitude_prune: share of each adapter's values kept (0-1].")
    majority_sign_method: str = _f("total", "ties: which sign wins a conflict, by total magnitude or by count.", choices=["total", "frequency"])
    svd_rank: Optional[int] = _f(None, "svd methods: rank of the merged adapter. Empty: the largest rank merged.")
    prompts: list = _f(["Who are you?"], "Asked of the merged adapter after the merge (greedy); the answers are in the run's result.")


@dataclass
class ServeSpec:
    adapters: list = _f([], "Adapters served beside the base model, each as NAME=PATH (PATH: a run folder, adapter, checkpoint or "
                            "export); a request's `model` picks one by NAME, the base model by its own name.")
    host: str = _f("127.0.0.1", "Address to listen on. 127.0.0.1: this machine only; any other address needs an API key "
                                "(--api-key, or the environment variable STUDIO_API_KEY; never stored in the spec).")
    port: int = _f(8000, "TCP port of the API (http://HOST:PORT/v1).")
    max_batch_size: int = _f(16, "Requests generated together per model; more wait for a free row.")
    max_tokens: int = _f(512, "Longest answer, in tokens, when a request does not give max_tokens.")
    num_threads: Optional[int] = _f(None, "CPU threads for torch. Empty: all cores. On a CPU busy with other work, 1 is faster "
                                          "(threads that wait on each other lose more than they gain).")
    stats_every: float = _f(10.0, "Seconds between two `stats` events (requests served, tokens/s) while requests come.")


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
    task: str = _f("train", f"What the job does: {', '.join(TASKS[:-1])} or {TASKS[-1]}.", choices=TASKS)
    output_dir: str = _f("runs/identity_lora", "The run folder: the spec, events, log and results go here.")
    model: ModelSpec = _sub(ModelSpec, "Which model to start from.")
    data: DataSpec = _sub(DataSpec, "Which data, and how it becomes token batches.")
    method: MethodSpec = _sub(MethodSpec, "What is trained and how.")
    train: TrainSpec = _sub(TrainSpec, "Optimisation and checkpointing.")
    eval: EvalSpec = _sub(EvalSpec, "Generation and scoring (task eval).")
    export: ExportSpec = _sub(ExportSpec, "Merging and conversion (task export).")
    generate: GenerateSpec = _sub(GenerateSpec, "Data generation: self-instruct or answers from a teacher (task generate).")
    serve: ServeSpec = _sub(ServeSpec, "The OpenAI-compatible API server (task serve).")
    merge: MergeSpec = _sub(MergeSpec, "Merging LoRA adapters into one (task merge).")
    launch: LaunchSpec = _sub(LaunchSpec, "Processes, devices and DeepSpeed.")

    def __post_init__(self):
        from studio.spec.rules import validate

        validate(self)
