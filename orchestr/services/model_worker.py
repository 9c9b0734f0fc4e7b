"""The transformers model worker: one model, served by orchestr's batching engine.

Run: ``python -m orchestr.services.model_worker --model-path embedded://SmolLM2-135M-Instruct``
(registers with the controller at ``--controller-address``; ``--no-register`` to run alone).
"""

from __future__ import annotations

import argparse
import sys

from orchestr.config.flags import add_flags, from_args
from orchestr.config.serving import EngineConfig
from orchestr.services.worker_base import add_model_path_args, add_worker_args, serve_engines, start_worker


def add_model_args(parser: argparse.ArgumentParser) -> None:
    add_model_path_args(parser, "local HF folder, .gguf file, hub id (local cache only) or embedded://NAME")
    parser.add_argument("--tokenizer", default=None, help="tokenizer path, if not the model's")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"])
    parser.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"],
                        help="auto: bf16 where the CPU/GPU runs it natively, else fp32")
    parser.add_argument("--num-gpus", type=int, default=1)
    parser.add_argument("--max-gpu-memory", default=None, help="per GPU, e.g. 20GiB")
    parser.add_argument("--load-8bit", action="store_true",
                        help="int8 weights (bitsandbytes on CUDA; on CPU weight-only int8 in groups of 64)")
    parser.add_argument("--cpu-offloading", action="store_true",
                        help="with --load-8bit / --max-gpu-memory: put what does not fit on the GPUs on the CPU")
    parser.add_argument("--conv-template", default=None,
                        help="fallback chat template (vicuna_v1.1, llama-2, chatml, generic); "
                             "default: the tokenizer's own")
    parser.add_argument("--trust-remote-code", action="store_true")


def add_engine_args(parser: argparse.ArgumentParser) -> None:
    add_flags(parser, EngineConfig)  # the `engine` section: one declaration of each flag


def engine_config(args: argparse.Namespace) -> EngineConfig:
    return from_args(EngineConfig, args)


def build_engine(args: argparse.Namespace, model_name: str):
    from orchestr.engine.engine import Engine

    return Engine.from_pretrained(
        args.model_path, engine_config(args), device=args.device, dtype=args.dtype, load_8bit=args.load_8bit,
        num_gpus=args.num_gpus, max_gpu_memory=args.max_gpu_memory, cpu_offloading=args.cpu_offloading,
        tokenizer=args.tokenizer, trust_remote_code=args.trust_remote_code, conv_template=args.conv_template,
        model_name=model_name, threads=args.num_threads,
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_worker_args(parser, default_port=21002)
    add_model_args(parser)
    add_engine_args(parser)
    args, log, names = start_worker(parser, argv, "orchestr.model_worker")
    from orchestr.engine.loader import ModelLoadError
    from orchestr.engine.templates import get_template

    if args.conv_template:
        try:
            get_template(args.conv_template)
        except ValueError as exc:
            sys.exit(f"error: {exc}")
    try:
        engine = build_engine(args, names[0])
    except ModelLoadError as exc:
        sys.exit(f"error: {exc}")
    engine.start()
    log.info("serving %s (%s, %s, batching=%s, max batch %d, KV cache %d tokens, %s)", names,
             engine.dtype_name, engine.device, engine.batching, engine.max_batch, engine.cache.capacity_tokens,
             engine.threads.describe())
    serve_engines({n: engine for n in names}, args)


if __name__ == "__main__":
    main()
