"""Schema for `orchestr train` (`conf/train/*.yaml`): data, method, hyper-parameters, output.

The base model is the selected `model` (any `conf/model/` entry; the embedded model by default):
`orchestr train model=vicuna-7b-v1.5 train=lora ...`. A `conf/train/` entry presets a method
(sft = full fine-tune, lora, dpo); every key below can be overridden as `train.<key>=...`.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class TrainDataConfig:
    """How the examples of `train.data` become token sequences and preference pairs."""

    eval_fraction: float = 0.1  # held-out share of the conversations / pairs (0: no held-out split)
    eval_max_examples: int | None = 64  # cap on the held-out split (eval cost)
    max_examples: int | None = None  # train on only the first N conversations / pairs (after the split)
    seed: int = 42  # shuffle before the held-out split
    # Long conversations: `split` cuts them at turn boundaries into pieces that fit max_length
    # (FastChat's split_long_conversation); `truncate` keeps the start of each.
    long_conversations: str = "split"  # split | truncate
    system_prompt: str | None = None  # replaces the template's default system message when set
    # Arena battles -> preference pairs (dpo): the winner's side is `chosen`, the loser's `rejected`.
    # Battles come from the logs through `clean.battles` (its filters apply; anonymous battles only).
    # A tie / both-bad vote names no winner: `drop` it, or `both` adds the pair in both orders
    # (two mirrored pairs whose DPO gradients cancel: a tie then only regularises).
    ties: str = "drop"  # drop | both
    bothbad: str = "drop"  # drop | both
    pairs_output: str | None = "${..output_dir}/pairs.json"  # where the derived pairs are written


@dataclass
class LoraSettings:
    enabled: bool = False
    r: int = 8
    alpha: int = 16
    dropout: float = 0.05
    target_modules: list[str] = field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    )
    # QLoRA: load the base quantised with bitsandbytes (4bit | 8bit); needs a bitsandbytes backend (CUDA).
    quantize: str | None = None
    merge: bool = True  # save the adapter merged into the base weights (a plain model folder)


@dataclass
class DistributedConfig:
    """How `orchestr train` spreads over the cluster's nodes (rendered, not hand-launched)."""

    launcher: str = "torchrun"  # torchrun | accelerate
    strategy: str = "ddp"  # ddp | fsdp | deepspeed_zero2 | deepspeed_zero3
    nodes: list[str] | None = None  # cluster nodes that train; None: those with GPUs (else all)
    nproc_per_node: int | None = None  # None: the node's `gpus` (1 on a node without GPUs)
    master_port: int = 29500
    fsdp_config: dict[str, str] = field(
        default_factory=lambda: {"fsdp": "full_shard auto_wrap", "transformer_layer_cls": "LlamaDecoderLayer"}
    )


@dataclass
class TrainConfig:
    method: str = "sft"  # sft | dpo (full fine-tune = sft without lora)
    # sft: a JSON/JSONL file of conversations (ShareGPT `conversations`, OpenAI `messages`, or
    # `orchestr clean` release records with `conversation`). dpo: a folder of arena logs, a
    # clean-battle file with conversations (clean.battles.mode=conv_release), or a pairs file
    # (`prompt`/`chosen`/`rejected`).
    data: str | None = None
    data_opts: TrainDataConfig = field(default_factory=TrainDataConfig)
    output_dir: str = "train_out/${model.name}-${.method}"
    run_name: str | None = None  # served name suggested in the output's model entry; None: folder name
    lora: LoraSettings = field(default_factory=LoraSettings)
    # hyper-parameters
    max_steps: int = -1  # > 0 overrides num_epochs
    num_epochs: float = 1.0
    learning_rate: float = 2e-5
    lr_scheduler: str = "cosine"
    warmup_ratio: float = 0.03
    weight_decay: float = 0.0
    batch_size: int = 2  # per device
    grad_accum: int = 1
    max_length: int = 512  # tokens per sequence; 0: the model's context length
    gradient_checkpointing: bool = False
    # CPU threads for torch; None: torch's default. On a busy machine 1 can be several times
    # faster than 2 (threads of one op wait for each other while the other is descheduled).
    num_threads: int | None = None
    seed: int = 42
    beta: float = 0.1  # dpo: strength of the KL pull to the reference model
    # precision: auto = bf16 on GPUs that support it (else fp16), fp32 on CPU
    precision: str = "auto"  # auto | fp32 | bf16 | fp16
    # checkpointing and logs
    save_steps: int = 10
    save_total_limit: int | None = 2
    resume: str = "auto"  # auto (last checkpoint in output_dir, if any) | never | <checkpoint folder>
    logging_steps: int = 1
    eval_steps: int | None = None  # None: evaluate at the end only
    eval_before: bool = True  # evaluate the base model first (eval_loss_base in results)
    report_to: list[str] = field(default_factory=list)  # extra trackers: tensorboard, wandb, ...
    progress_bar: bool = True
    distributed: DistributedConfig = field(default_factory=DistributedConfig)
