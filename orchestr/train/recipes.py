"""SFT (full or LoRA) and DPO runs on TRL's trainers, from a `train` config section.

`build(cfg)` prepares data, model and trainer (tests inspect it before training); `run(cfg)`
evaluates the base model, trains (resuming from the last checkpoint when there is one), evaluates
again and saves a servable model folder (LoRA merged) with `train_results.json` beside it.

SIGINT or SIGTERM while training: the optimizer step under way finishes, a checkpoint of it is
saved (every rank agrees on the step), and `Interrupted` propagates with `.checkpoint` set; the same
command resumes from it (`train.resume=auto`).
"""

from __future__ import annotations

import csv
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from orchestr import interrupts
from orchestr.train.data import (
    DataError,
    DataReport,
    held_out_split,
    load_conversations,
    load_pairs,
    sft_examples,
)
from orchestr.train.dist import strategy_args

METHODS = ("sft", "dpo")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
RESULTS_FILE = "train_results.json"
BASE_EVAL_FILE = "eval_base.json"
LOG_FILE = "log.csv"
MODEL_ENTRY_FILE = "orchestr_model.yaml"


@dataclass
class Prepared:
    trainer: Any
    tokenizer: Any
    base_path: str
    train_size: int
    eval_size: int
    report: DataReport


def _csv_callback(path: Path) -> Any:
    """Appends every logged metric to ``path`` (run, time, step, epoch, name, value): a resumed
    run appends under its own run id."""
    from transformers import TrainerCallback

    run_id = f"{os.getpid()}-{int(time.time())}"

    class CsvLog(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            if not state.is_world_process_zero or not logs:
                return
            new = not path.exists()
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(path, "a", newline="") as f:
                w = csv.writer(f)
                if new:
                    w.writerow(["run", "time", "step", "epoch", "name", "value"])
                for name, value in logs.items():
                    if isinstance(value, (int, float)):
                        w.writerow([run_id, round(time.time(), 3), state.global_step,
                                    round(state.epoch or 0.0, 4), name, value])  # fmt: skip

    return CsvLog()


def _stop_on_signal() -> Any:
    """A callback that, once SIGINT/SIGTERM is pending, has the trainer save a checkpoint of the step
    just ended and stop (no evaluation first)."""
    from transformers import TrainerCallback

    class StopOnSignal(TrainerCallback):
        step: int | None = None

        def on_step_end(self, args, state, control, **kwargs):
            if _signalled_anywhere(args):
                self.step = state.global_step
                control.should_save, control.should_training_stop, control.should_evaluate = True, True, False

    return StopOnSignal()


def _signalled_anywhere(args: Any) -> bool:
    """Whether this rank, or any rank of a distributed run, has a signal pending (all ranks must stop
    at the same step, or the next collective would wait forever)."""
    mine = interrupts.pending() is not None
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return mine
    import torch

    flag = torch.tensor([1 if mine else 0], device=args.device)
    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    return bool(flag.item())


def _precision(precision: str, device: str) -> dict[str, bool]:
    if precision not in PRECISIONS:
        raise DataError(f"train.precision={precision!r}: expected one of {', '.join(PRECISIONS)}")
    if precision == "auto":
        if device != "cuda":
            return {}
        import torch

        return {"bf16": True} if torch.cuda.is_bf16_supported() else {"fp16": True}
    if precision == "fp16" and device == "cpu":
        raise DataError("train.precision=fp16: not supported on CPU (use fp32 or bf16)")
    return {"bf16": precision == "bf16", "fp16": precision == "fp16"}


def _load_base(model_cfg: Any, train: Any, device: str) -> tuple[Any, Any, str]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from orchestr.engine.loader import resolve_model_path

    folder = resolve_model_path(model_cfg.path)
    tok_path = resolve_model_path(model_cfg.tokenizer) if model_cfg.tokenizer else folder
    tokenizer = AutoTokenizer.from_pretrained(tok_path, trust_remote_code=model_cfg.trust_remote_code)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    if not tokenizer.chat_template:
        raise DataError(f"model.path={model_cfg.path!r}: the tokenizer has no chat template to render conversations")
    kwargs: dict[str, Any] = {"dtype": torch.float32, "trust_remote_code": model_cfg.trust_remote_code}
    quant = train.lora.quantize if train.lora.enabled else None
    if quant:
        if quant not in ("4bit", "8bit"):
            raise DataError(f"train.lora.quantize={quant!r}: expected 4bit, 8bit or null")
        if device != "cuda":
            # bitsandbytes loads 4-bit on CPU too, but a 3-step check there gave a held-out loss
            # of 17.6 after training (3.8 before): not trusted until that is understood.
            raise DataError("train.lora.quantize (QLoRA) needs a CUDA GPU (bitsandbytes' CPU path is not trusted here)")
        from transformers import BitsAndBytesConfig

        bf16 = device == "cuda" and torch.cuda.is_bf16_supported()
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=quant == "4bit", load_in_8bit=quant == "8bit",
            bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.bfloat16 if bf16 else torch.float32,
        )  # fmt: skip
    model = AutoModelForCausalLM.from_pretrained(folder, **kwargs)
    if quant:
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=train.gradient_checkpointing)
    return model, tokenizer, folder


def _peft_config(train: Any) -> Any:
    if not train.lora.enabled:
        return None
    from peft import LoraConfig

    return LoraConfig(
        r=train.lora.r,
        lora_alpha=train.lora.alpha,
        lora_dropout=train.lora.dropout,
        target_modules=list(train.lora.target_modules),
        task_type="CAUSAL_LM",
    )


def _common_args(train: Any, device: str, has_eval: bool) -> dict[str, Any]:
    return {
        "output_dir": str(Path(train.output_dir).expanduser()),
        "max_steps": train.max_steps,
        "num_train_epochs": train.num_epochs,
        "learning_rate": train.learning_rate,
        "lr_scheduler_type": train.lr_scheduler,
        "warmup_steps": train.warmup_ratio,  # a float < 1 is a ratio of the total steps
        "weight_decay": train.weight_decay,
        "per_device_train_batch_size": train.batch_size,
        "per_device_eval_batch_size": train.batch_size,
        "gradient_accumulation_steps": train.grad_accum,
        "activation_checkpointing": train.gradient_checkpointing,
        "logging_steps": train.logging_steps,
        "save_strategy": "steps",
        "save_steps": train.save_steps,
        "save_total_limit": train.save_total_limit,
        "eval_strategy": "steps" if (has_eval and train.eval_steps) else "no",
        "eval_steps": train.eval_steps,
        "seed": train.seed,
        "report_to": list(train.report_to) or "none",
        "disable_tqdm": not train.progress_bar,
        "use_cpu": device == "cpu",
        "include_num_input_tokens_seen": "non_padding",
        "dataloader_num_workers": 0,
        **_precision(train.precision, device),
        **strategy_args(train.distributed.strategy, dict(train.distributed.fsdp_config)),
    }


def build(cfg: Any) -> Prepared:
    """Data, base model and TRL trainer for `cfg` (the whole composed config)."""
    from datasets import Dataset

    from orchestr.engine.loader import resolve_device

    train = cfg.train
    if train.method not in METHODS:
        raise DataError(f"train.method={train.method!r}: expected one of {', '.join(METHODS)}")
    if not train.data:
        raise DataError("train.data is not set: give a conversations file (sft) or arena logs / pairs (dpo)")
    device = resolve_device(cfg.model.device)
    if train.num_threads:
        import torch

        torch.set_num_threads(int(train.num_threads))
    model, tokenizer, base = _load_base(cfg.model, train, device)
    max_length = int(train.max_length or 0)
    if max_length <= 0:
        from orchestr.engine.loader import context_length

        max_length = context_length(model, tokenizer)
    opts = train.data_opts
    report = DataReport()
    callbacks = [_csv_callback(Path(train.output_dir).expanduser() / LOG_FILE)]

    if train.method == "sft":
        from trl import SFTConfig, SFTTrainer

        convs = load_conversations(train.data, report)
        # held out by conversation, before splitting: no piece of a held-out conversation is trained on
        train_convs, eval_convs = held_out_split(convs, opts.eval_fraction, opts.eval_max_examples, opts.seed)
        if opts.max_examples is not None:
            train_convs = train_convs[: opts.max_examples]
        train_ex = sft_examples(tokenizer, train_convs, max_length, opts.long_conversations, report, opts.system_prompt)
        eval_ex = sft_examples(tokenizer, eval_convs, max_length, opts.long_conversations, DataReport(),
                               opts.system_prompt)  # fmt: skip
        report.kept = len(train_ex) + len(eval_ex)
        args = SFTConfig(max_length=max_length, dataset_num_proc=None, **_common_args(train, device, bool(eval_ex)))
        trainer_cls = SFTTrainer
    else:
        from trl import DPOConfig, DPOTrainer

        pairs = load_pairs(train.data, opts, cfg.clean.battles, report)
        if not pairs:
            raise DataError(f"train.data={train.data!r}: no preference pairs ({report})")
        if opts.pairs_output:
            out = Path(opts.pairs_output).expanduser()
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(json.dumps(pairs, indent=2, ensure_ascii=False))
        rows = [{k: p[k] for k in ("prompt", "chosen", "rejected")} for p in pairs]
        train_ex, eval_ex = held_out_split(rows, opts.eval_fraction, opts.eval_max_examples, opts.seed)
        if opts.max_examples is not None:
            train_ex = train_ex[: opts.max_examples]
        args = DPOConfig(max_length=max_length, beta=train.beta, dataset_num_proc=None,
                         **_common_args(train, device, bool(eval_ex)))  # fmt: skip
        trainer_cls = DPOTrainer
    trainer = trainer_cls(
        model=model,
        args=args,
        train_dataset=Dataset.from_list(train_ex),
        eval_dataset=Dataset.from_list(eval_ex) if eval_ex else None,
        processing_class=tokenizer,
        peft_config=_peft_config(train),
        callbacks=callbacks,
    )
    return Prepared(trainer, tokenizer, base, len(train_ex), len(eval_ex), report)


def last_checkpoint(output_dir: str) -> str | None:
    from transformers.trainer_utils import get_last_checkpoint

    out = Path(output_dir).expanduser()
    return get_last_checkpoint(str(out)) if out.is_dir() else None


def _resume_from(train: Any) -> str | None:
    if train.resume == "never":
        return None
    if train.resume == "auto":
        return last_checkpoint(train.output_dir)
    if not (Path(train.resume).expanduser() / "trainer_state.json").is_file():
        raise DataError(f"train.resume={train.resume!r}: not a checkpoint folder (no trainer_state.json)")
    return str(Path(train.resume).expanduser())


def _save_model(prep: Prepared, cfg: Any, out: Path) -> None:
    trainer, train = prep.trainer, cfg.train
    model = trainer.model
    if train.lora.enabled and train.lora.merge and train.lora.quantize:
        model = _merge_into_full_precision(trainer, prep.base_path, out)
    elif train.lora.enabled and train.lora.merge:
        model = model.merge_and_unload()
    elif train.lora.enabled:
        trainer.save_model(str(out))  # the adapter alone (adapter_config.json + weights)
        prep.tokenizer.save_pretrained(str(out))
        return
    model.save_pretrained(str(out), safe_serialization=True)
    prep.tokenizer.save_pretrained(str(out))
    name = train.run_name or out.name
    (out / MODEL_ENTRY_FILE).write_text(
        "# A conf/model/ entry for this training output: copy it to conf/model/ (or a folder named\n"
        "# by ORCHESTR_CONFIG_PATH, under model/) and `orchestr launch model=<file stem>`.\n"
        f"name: {name}\npath: {out.resolve()}\nbackend: hf\ndtype: auto\n"
        f"# trained from {cfg.model.name} ({cfg.model.path}) with train.method={train.method}"
        f"{' + lora' if train.lora.enabled else ''}\n"
    )


def _merge_into_full_precision(trainer: Any, base_path: str, out: Path) -> Any:
    """QLoRA: the adapters trained over a quantised base are merged into the fp32 base, so the
    output is a plain model folder rather than a bitsandbytes one."""
    import tempfile

    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    with tempfile.TemporaryDirectory(dir=out, prefix=".adapter-") as tmp:
        trainer.model.save_pretrained(tmp)
        base = AutoModelForCausalLM.from_pretrained(base_path, dtype=torch.float32)
        return PeftModel.from_pretrained(base, tmp).merge_and_unload()


def run(cfg: Any) -> dict[str, Any]:
    train = cfg.train
    out = Path(train.output_dir).expanduser()
    resume = _resume_from(train)
    prep = build(cfg)
    trainer = prep.trainer
    main = trainer.is_world_process_zero()
    if main:
        print(f"orchestr train: {train.method}{' + lora' if train.lora.enabled else ''} on {cfg.model.name} "
              f"({prep.base_path}); data: {prep.report}; {prep.train_size} train / {prep.eval_size} held-out",
              flush=True)  # fmt: skip
    base_eval = None
    base_file = out / BASE_EVAL_FILE
    if prep.eval_size and train.eval_before:
        if base_file.is_file():
            base_eval = json.loads(base_file.read_text())
        elif resume is None:
            base_eval = trainer.evaluate(metric_key_prefix="eval")
            if main:
                out.mkdir(parents=True, exist_ok=True)
                base_file.write_text(json.dumps(base_eval, indent=2))
    resumed_step = None
    if resume:
        resumed_step = json.loads((Path(resume) / "trainer_state.json").read_text()).get("global_step")
        if main:
            print(f"orchestr train: resuming from {resume} (step {resumed_step})", flush=True)
    started = time.time()
    stop = _stop_on_signal()
    trainer.add_callback(stop)
    try:
        with interrupts.deferred():  # a signal: checkpoint the step under way, then stop
            result = trainer.train(resume_from_checkpoint=resume)
    except interrupts.Interrupted as e:
        saved = out / f"checkpoint-{stop.step}" if stop.step is not None else None
        e.checkpoint = str(saved) if saved is not None and saved.is_dir() else last_checkpoint(str(out))
        raise
    final_eval = trainer.evaluate() if prep.eval_size else {}
    results = {
        "method": train.method,
        "lora": bool(train.lora.enabled),
        "base_model": cfg.model.path,
        "base_folder": prep.base_path,
        "output_dir": str(out.resolve()),
        "global_step": trainer.state.global_step,
        "resumed_from_step": resumed_step,
        "train_loss": result.training_loss,
        "train_runtime_s": round(time.time() - started, 2),
        "num_input_tokens_seen": int(trainer.state.num_input_tokens_seen or 0),
        "train_examples": prep.train_size,
        "eval_examples": prep.eval_size,
        "eval_loss_base": (base_eval or {}).get("eval_loss"),
        "eval_loss": final_eval.get("eval_loss"),
        "eval_metrics": final_eval,
        "data": str(prep.report),
    }
    if main:
        out.mkdir(parents=True, exist_ok=True)
        _save_model(prep, cfg, out)
        (out / RESULTS_FILE).write_text(json.dumps(results, indent=2))
        print(f"orchestr train: done at step {results['global_step']}; eval_loss {results['eval_loss']} "
              f"(base {results['eval_loss_base']}); model in {out}", flush=True)  # fmt: skip
    return results
