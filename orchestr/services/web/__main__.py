"""`python -m orchestr.services.web`: the Gradio web UI (FastChat's gradio_web_server[_multi] flags)."""

from __future__ import annotations

import argparse
import sys

from orchestr.config.flags import add_flags, from_args
from orchestr.config.serving import WebServiceConfig


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m orchestr.services.web", description=__doc__)
    add_flags(ap, WebServiceConfig)  # services.web: one declaration of each flag (config/serving.py)
    ap.add_argument("--controller-address", "--controller-url", dest="controller_address",
                    default="http://localhost:21001")
    return ap


def config_from_args(args: argparse.Namespace) -> WebServiceConfig:
    """The flags as the schema object; a value out of range ends the program with one line."""
    try:
        return from_args(WebServiceConfig, args)
    except ValueError as exc:
        sys.exit(f"orchestr.services.web: --{str(exc).replace('_', '-')}")


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    cfg = config_from_args(args)

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
    recorder = Recorder(cfg.log_dir, cfg.ip_logging, cfg.ip_hash_salt)
    ctx = WebContext(cfg=cfg, client=client, moderator=moderator, recorder=recorder,
                     models=client.list_models(), log_problem=recorder.check_writable())
    log.info("web UI (%s mode) on %s:%d, controller %s, models %s, logs in %s", cfg.mode, cfg.host, cfg.port,
             args.controller_address, ctx.models or "none yet", cfg.log_dir)

    from orchestr.services.web.app import create_app

    if auth:
        log.info("the UI asks for a login (%d user(s))", len(auth))
    run_app(create_app(ctx, auth), cfg.host, cfg.port, keep_alive_s=cfg.keep_alive_timeout_s,
            header_timeout_s=cfg.header_timeout_s)


if __name__ == "__main__":
    main()
