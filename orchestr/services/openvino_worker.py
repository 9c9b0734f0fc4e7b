"""The OpenVINO worker: one model served by OpenVINO GenAI's continuous-batching pipeline, with
the same registration, streaming and request parameters as the transformers worker (both sit
on worker_base).

Run: ``python -m orchestr.services.openvino_worker --model-path embedded://SmolLM2-135M-Instruct
--dtype bfloat16``. The model is exported to OpenVINO IR once (optimum-intel, from
``.venv-openvino``: ``scripts/setup_openvino.sh``) and cached; serving needs only openvino-genai
(``pip install 'orchestr[openvino]'``), imported once the arguments are parsed.
"""

from __future__ import annotations

import argparse
import sys

from orchestr.engine.openvino_export import WEIGHT_FORMATS
from orchestr.services.model_worker import add_engine_args
from orchestr.services.worker_base import add_model_path_args, add_worker_args, serve_engines, start_worker


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m orchestr.services.openvino_worker",
                                     description=__doc__.splitlines()[0])
    add_worker_args(parser, default_port=21002)
    add_model_path_args(parser, "OpenVINO IR folder, or anything the transformers worker loads (exported once)")
    parser.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"],
                        help="inference (and KV-cache) precision; auto: OpenVINO's choice (bf16 on AMX CPUs)")
    parser.add_argument("--weight-format", default="fp32", choices=list(WEIGHT_FORMATS),
                        help="weights of the exported IR (int8/int4: NNCF weight compression)")
    parser.add_argument("--max-model-len", type=int, default=None, help="context length (default: the model's)")
    parser.add_argument("--conv-template", default=None,
                        help="fallback chat template when the tokenizer has none (vicuna_v1.1, llama-2, ...)")
    parser.add_argument("--trust-remote-code", action="store_true")
    add_engine_args(parser)  # --max-batch-size, --kv-cache-tokens, --num-threads ...: the engine.* keys
    return parser


def check_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    for flag in ("max_batch_size", "max_num_batched_tokens", "kv_cache_tokens"):
        if getattr(args, flag) < 1:
            parser.error(f"--{flag.replace('_', '-')} must be >= 1")
    if args.num_threads is not None and args.num_threads < 1:
        parser.error("--num-threads must be >= 1")
    if args.max_model_len is not None and args.max_model_len < 1:
        parser.error("--max-model-len must be >= 1")


def main(argv: list[str] | None = None) -> None:
    from orchestr.services.openvino_engine import OpenVinoEngine, import_openvino_genai

    args, log, names = start_worker(build_parser(), argv, "orchestr.openvino_worker", check_args,
                                    import_openvino_genai)
    from orchestr.engine.loader import ModelLoadError
    from orchestr.engine.openvino_export import resolve_openvino_model

    try:
        folder = resolve_openvino_model(args.model_path, args.weight_format, args.trust_remote_code)
    except ModelLoadError as e:
        sys.exit(f"error: {e}")
    engine = OpenVinoEngine(args, folder, model_name=names[0])
    log.info("serving %s with OpenVINO GenAI from %s (%s, context %d, %s)", names, folder, engine.dtype_name,
             engine.context_len, engine.properties or "default properties")
    serve_engines({n: engine for n in names}, args)


if __name__ == "__main__":
    main()
