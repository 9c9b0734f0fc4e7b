"""`python -m orchestr.services.web`: the Gradio web UI (FastChat's gradio_web_server[_multi] flags)."""

from __future__ import annotations

import argparse
import json
import sys

from orchestr.config.serving import WebModerationConfig, WebServiceConfig

_D = WebServiceConfig()  # flag defaults come from the config schema: one place for each default
_M = WebModerationConfig()


def _json_arg(kind: type, what: str):
    def parse(text: str):
        try:
            value = json.loads(text)
        except json.JSONDecodeError as exc:
            raise argparse.ArgumentTypeError(f"{what} must be JSON ({exc.msg})") from None
        if not isinstance(value, kind):
            raise argparse.ArgumentTypeError(f"{what} must be a JSON {kind.__name__}")
        return value
    return parse


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m orchestr.services.web", description=__doc__)
    ap.add_argument("--host", default="127.0.0.1", help="address to bind (default: loopback only)")
    ap.add_argument("--port", type=int, default=_D.port)
    ap.add_argument("--controller-address", "--controller-url", dest="controller_address",
                    default="http://localhost:21001")
    ap.add_argument("--mode", choices=["single", "multi"], default=_D.mode,
                    help="single: chat tab only; multi: arena battle + side-by-side + chat + leaderboard")
    ap.add_argument("--log-dir", default=_D.log_dir, help="folder of the YYYY-MM-DD-conv.json logs")
    ap.add_argument("--model-list-mode", choices=["once", "reload"], default=_D.model_list_mode)
    ap.add_argument("--concurrency-count", type=int, default=_D.concurrency_count)
    ap.add_argument("--ip-logging", choices=["hash", "drop", "raw"], default=_D.ip_logging)
    ap.add_argument("--ip-hash-salt", default=_D.ip_hash_salt)
    ap.add_argument("--max-turns", type=int, default=_D.max_turns)
    ap.add_argument("--max-input-chars", type=int, default=_D.max_input_chars)
    ap.add_argument("--temperature", type=float, default=_D.temperature)
    ap.add_argument("--top-p", type=float, default=_D.top_p)
    ap.add_argument("--max-new-tokens", type=int, default=_D.max_new_tokens)
    ap.add_argument("--arena-sampling-weights", type=_json_arg(dict, "--arena-sampling-weights"), default={},
                    help='JSON object, e.g. \'{"model-a": 2, "model-b": 1}\'')
    ap.add_argument("--arena-excluded-pairs", type=_json_arg(list, "--arena-excluded-pairs"), default=[],
                    help='JSON list of pairs, e.g. \'[["model-a", "model-b"]]\'')
    ap.add_argument("--moderate", action="store_true", help="enable input moderation")
    ap.add_argument("--moderation-url", default=None, help="OpenAI-compatible base URL (…/v1)")
    ap.add_argument("--moderation-model", default=_M.model)
    ap.add_argument("--moderation-api-key-env", default=_M.api_key_env)
    ap.add_argument("--moderation-timeout", type=float, default=_M.timeout_s)
    ap.add_argument("--blocked-words", type=_json_arg(list, "--blocked-words"), default=[])
    ap.add_argument("--blocked-words-file", default=None)
    return ap


def config_from_args(args: argparse.Namespace) -> WebServiceConfig:
    moderation = WebModerationConfig(enabled=args.moderate, url=args.moderation_url, model=args.moderation_model,
                                     api_key_env=args.moderation_api_key_env, timeout_s=args.moderation_timeout,
                                     blocked_words=[str(w) for w in args.blocked_words],
                                     blocked_words_file=args.blocked_words_file)
    return WebServiceConfig(host=args.host, port=args.port, mode=args.mode, log_dir=args.log_dir,
                            model_list_mode=args.model_list_mode, concurrency_count=args.concurrency_count,
                            ip_logging=args.ip_logging, ip_hash_salt=args.ip_hash_salt,
                            max_turns=args.max_turns, max_input_chars=args.max_input_chars,
                            temperature=args.temperature, top_p=args.top_p, max_new_tokens=args.max_new_tokens,
                            arena_sampling_weights={str(k): float(v) for k, v in args.arena_sampling_weights.items()},
                            arena_excluded_pairs=[[str(x) for x in p] for p in args.arena_excluded_pairs],
                            moderation=moderation)


def check(cfg: WebServiceConfig) -> None:
    """User mistakes in flags end the program with one clear line."""
    if cfg.max_turns < 1 or cfg.max_input_chars < 1 or cfg.max_new_tokens < 1 or cfg.concurrency_count < 1:
        sys.exit("--max-turns, --max-input-chars, --max-new-tokens and --concurrency-count must be >= 1")
    if any(len(p) != 2 for p in cfg.arena_excluded_pairs):
        sys.exit("--arena-excluded-pairs: each pair must name exactly two models")
    if any(w < 0 for w in cfg.arena_sampling_weights.values()):
        sys.exit("--arena-sampling-weights: weights must be >= 0")


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    cfg = config_from_args(args)
    check(cfg)

    import os

    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no phoning home from a server
    from orchestr.services.http_util import run_app, setup_logging
    from orchestr.services.web.client import ServingClient
    from orchestr.services.web.context import WebContext
    from orchestr.services.web.moderation import Moderator
    from orchestr.services.web.recorder import Recorder

    log = setup_logging("orchestr.web")
    from orchestr.secrets import SecretError, web_auth

    try:
        auth = web_auth()  # ORCHESTR_WEB_AUTH(_FILE): never a flag, so never in `ps`
    except SecretError as exc:
        sys.exit(str(exc))
    try:
        moderator = Moderator(cfg.moderation)
    except FileNotFoundError as exc:
        sys.exit(str(exc))
    client = ServingClient(args.controller_address)
    ctx = WebContext(cfg=cfg, client=client, moderator=moderator,
                     recorder=Recorder(cfg.log_dir, cfg.ip_logging, cfg.ip_hash_salt),
                     models=client.list_models())
    log.info("web UI (%s mode) on %s:%d, controller %s, models %s, logs in %s", cfg.mode, cfg.host, cfg.port,
             args.controller_address, ctx.models or "none yet", cfg.log_dir)

    from orchestr.services.web.app import create_app

    if auth:
        log.info("the UI asks for a login (%d user(s))", len(auth))
    run_app(create_app(ctx, auth), cfg.host, cfg.port)


if __name__ == "__main__":
    main()
