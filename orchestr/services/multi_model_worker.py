"""The multi-model worker: several models in one process, one transformers engine each, each
registered under its own name(s); requests go to the engine of their ``model``, and
``--limit-worker-concurrency`` is shared by all of them.

Run::

    python -m orchestr.services.multi_model_worker \\
        --model-path embedded://SmolLM2-135M-Instruct --model-names smollm2-135m --dtype float32 \\
        --model-path embedded://SmolLM2-135M-Instruct --model-names smollm2-135m-int8 --load-8bit

Each ``--model-path`` starts a model: the model options after it (``--model-names``, ``--dtype``,
``--load-8bit``, ``--device``, ``--tokenizer``, ``--conv-template``, ...) apply to that model only.
Model options before the first ``--model-path`` apply to every model. Worker options (``--port``,
``--controller-address``, ``--limit-worker-concurrency``, the batching options) go anywhere.
FastChat's form, all paths then all names (``--model-path A --model-path B --model-names a
--model-names b``), is accepted too: names are then paired with paths in order.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass

from orchestr.services.model_worker import add_engine_args, add_model_args
from orchestr.services.worker_base import add_worker_args, default_model_name, serve_engines


class ArgsError(ValueError):
    """A command line the worker cannot serve; the message is for the user."""


@dataclass
class ModelSpec:
    """One model of the worker: its names and its model options (a model_worker namespace)."""

    names: list[str]
    args: argparse.Namespace


def model_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    add_model_args(p)
    # One model may carry several --model-names (FastChat's form, or a model served under aliases).
    p.set_defaults(model_path=None)
    for action in p._actions:
        if action.dest == "model_names":
            action.default = None
    return p


def _option_arity(parser: argparse.ArgumentParser) -> dict[str, int]:
    """Option string -> number of values it takes (0 for flags)."""
    arity = {}
    for action in parser._actions:
        n = 0 if action.nargs == 0 else 1
        for opt in action.option_strings:
            arity[opt] = n
    return arity


def split_argv(argv: list[str]) -> tuple[list[str], list[str], list[list[str]]]:
    """Split a command line into (worker args, model options for every model, one section per
    ``--model-path``). Pure: no parsing of values, only of which option owns which tokens."""
    arity = _option_arity(model_parser())
    worker: list[str] = []
    shared: list[str] = []
    sections: list[list[str]] = []
    i = 0
    while i < len(argv):
        tok = argv[i]
        opt = tok.split("=", 1)[0] if tok.startswith("--") else tok
        if opt in arity:
            take = 1 if "=" in tok or arity[opt] == 0 else 2
            group = argv[i:i + take]
            if opt == "--model-path":
                sections.append(group)
            elif sections:
                sections[-1].extend(group)
            else:
                shared.extend(group)
            i += take
        else:
            worker.append(tok)
            i += 1
    return worker, shared, sections


def _names_of(section: list[str]) -> list[str]:
    names: list[str] = []
    i = 0
    while i < len(section):
        tok = section[i]
        if tok == "--model-names" and i + 1 < len(section):
            names.append(section[i + 1])
            i += 2
            continue
        if tok.startswith("--model-names="):
            names.append(tok.split("=", 1)[1])
        i += 1
    return names


def _without_names(section: list[str]) -> list[str]:
    out, i = [], 0
    while i < len(section):
        if section[i] == "--model-names":
            i += 2
            continue
        if not section[i].startswith("--model-names="):
            out.append(section[i])
        i += 1
    return out


def _split_names(values: list[str]) -> list[str]:
    return [n.strip() for v in values for n in v.split(",") if n.strip()]


def model_specs(shared: list[str], sections: list[list[str]]) -> list[ModelSpec]:
    """One ModelSpec per --model-path, names paired FastChat-style when they were all given after
    the paths. Raises ArgsError for unusable combinations."""
    if not sections:
        raise ArgsError("give at least one --model-path")
    parser = model_parser()
    names_per = [_names_of(s) for s in sections]
    shared_names = _names_of(shared)
    if shared_names:
        raise ArgsError("--model-names before the first --model-path: put each model's names after its path")
    total = sum(len(n) for n in names_per)
    # FastChat's form: `--model-path A --model-path B --model-names a --model-names b`, i.e. all
    # names landed in the last section: pair them with the paths in order.
    if total == len(sections) > 1 and len(names_per[-1]) == total:
        names_per = [[n] for n in names_per[-1]]
        sections = [_without_names(s) for s in sections]
    specs: list[ModelSpec] = []
    for section, names in zip(sections, names_per, strict=True):
        try:
            ns = parser.parse_args([*shared, *_without_names(section)])
        except SystemExit as e:  # argparse already printed why
            raise ArgsError(f"bad model options: {' '.join(section)}") from e
        specs.append(ModelSpec(names=_split_names(names) or [default_model_name(ns.model_path)], args=ns))
    seen: dict[str, int] = {}
    for idx, spec in enumerate(specs):
        for n in spec.names:
            if n in seen:
                raise ArgsError(f"model name {n!r} is given to two models (#{seen[n] + 1} and #{idx + 1})")
            seen[n] = idx
    return specs


def worker_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m orchestr.services.multi_model_worker",
                                description=__doc__.split("\n\n")[0].replace("\n", " "),
                                epilog="model options (per --model-path): --model-path --model-names --tokenizer "
                                       "--device --dtype --num-gpus --max-gpu-memory --load-8bit --cpu-offloading "
                                       "--conv-template --trust-remote-code",
                                allow_abbrev=False)
    add_worker_args(p, default_port=21002)
    add_engine_args(p)
    return p


def parse(argv: list[str]) -> tuple[argparse.Namespace, list[ModelSpec]]:
    parser = worker_parser()
    worker_argv, shared, sections = split_argv(argv)
    args = parser.parse_args(worker_argv)
    try:
        specs = model_specs(shared, sections)
    except ArgsError as e:
        parser.error(str(e))
    return args, specs


def main(argv: list[str] | None = None) -> None:
    args, specs = parse(list(sys.argv[1:] if argv is None else argv))
    from orchestr.engine.loader import ModelLoadError
    from orchestr.engine.templates import get_template
    from orchestr.services.http_util import setup_logging
    from orchestr.services.model_worker import build_engine

    log = setup_logging("orchestr.multi_model_worker")
    engines: dict[str, object] = {}
    for spec in specs:
        if spec.args.conv_template:
            try:
                get_template(spec.args.conv_template)
            except ValueError as exc:
                sys.exit(f"error: {exc}")
        merged = argparse.Namespace(**{**vars(args), **vars(spec.args)})
        try:
            engine = build_engine(merged, spec.names[0])
        except ModelLoadError as exc:
            sys.exit(f"error: {exc}")
        engine.start()
        log.info("model %s: %s (%s, %s, batching=%s)", spec.names, spec.args.model_path, engine.dtype_name,
                 engine.device, engine.batching)
        engines.update({n: engine for n in spec.names})
    serve_engines(engines, args)


if __name__ == "__main__":
    main()
