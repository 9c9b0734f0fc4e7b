"""The vLLM worker: one model served by vLLM's async engine, with the same registration,
streaming and request parameters as the transformers worker (both sit on worker_base).

Run: ``python -m orchestr.services.vllm_worker --model-path embedded://SmolLM2-135M-Instruct
--dtype bfloat16 --max-model-len 2048 --gpu-memory-utilization 0.15`` (on the CPU build of vLLM,
``--gpu-memory-utilization`` is a share of CPU memory; ``VLLM_CPU_KVCACHE_SPACE=N`` GiB overrides it).

vLLM is optional (``pip install 'orchestr[vllm]'``; on CPU ``scripts/setup_vllm.sh``): it is
imported only once the arguments are parsed, and its absence is a one-line error.
"""

from __future__ import annotations

import argparse
import sys

from orchestr.services.worker_base import add_model_path_args, add_worker_args, serve_engines, start_worker


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m orchestr.services.vllm_worker",
                                     description=__doc__.splitlines()[0])
    add_worker_args(parser, default_port=21002)
    add_model_path_args(parser, "local HF folder, .gguf file, hub id (local cache only) or embedded://NAME")
    parser.add_argument("--tokenizer", default=None, help="tokenizer path, if not the model's")
    parser.add_argument("--num-gpus", type=int, default=1,
                        help="tensor parallel size; more than 1 runs vLLM's Ray backend (needs `ray start --head`)")
    parser.add_argument("--quantization", default=None, help="vLLM quantisation method: awq, gptq, fp8, ...")
    parser.add_argument("--gpu-memory-utilization", type=float, default=0.9,
                        help="share of GPU memory vLLM may use (CPU build: share of RAM, e.g. 0.15)")
    parser.add_argument("--max-model-len", type=int, default=None, help="context length (default: the model's)")
    parser.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16", "half"],
                        help="weights/activations dtype (auto: vLLM's choice for the model and hardware)")
    parser.add_argument("--conv-template", default=None,
                        help="fallback chat template when the tokenizer has none (vicuna_v1.1, llama-2, ...)")
    parser.add_argument("--trust-remote-code", action="store_true")
    parser.add_argument("--enforce-eager", action="store_true",
                        help="skip vLLM's graph compilation (faster start, slower decoding)")
    parser.add_argument("--seed", type=int, default=None, help="vLLM's engine seed")
    return parser


def check_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if args.num_gpus < 1:
        parser.error("--num-gpus must be >= 1")
    if not 0 < args.gpu_memory_utilization <= 1:
        parser.error("--gpu-memory-utilization must be in (0, 1]")
    if args.max_model_len is not None and args.max_model_len < 1:
        parser.error("--max-model-len must be >= 1")


def main(argv: list[str] | None = None) -> None:
    from orchestr.services.vllm_engine import VllmEngine, import_vllm

    args, log, names = start_worker(build_parser(), argv, "orchestr.vllm_worker", check_args, import_vllm)

    from orchestr.engine.loader import ModelLoadError, resolve_model_path

    try:
        folder = resolve_model_path(args.model_path)
        tokenizer = resolve_model_path(args.tokenizer) if args.tokenizer else None
    except ModelLoadError as e:
        sys.exit(f"error: {e}")
    log.info("starting vLLM on %s (first start compiles the model: minutes on CPU)", folder)
    engine = VllmEngine(args, folder, tokenizer, model_name=names[0])
    log.info("serving %s with vLLM (%s, %s, context %d)", names, engine.dtype_name, engine.device, engine.context_len)
    serve_engines({n: engine for n in names}, args)


# vLLM starts its engine in a separate process (spawn): the guard keeps that child from
# re-running the worker.
if __name__ == "__main__":
    main()
