"""A model as OpenVINO IR: exported once from its Hugging Face folder and cached, like the
GGUF -> safetensors conversion in :mod:`orchestr.engine.loader`.

The export (``optimum-cli export openvino``) needs optimum-intel and torch, whose pins
(transformers < 5.6) clash with orchestr's main environment; it runs in whichever interpreter
has them: this one, ``$ORCHESTR_OPENVINO_EXPORT_PYTHON``, or the repository's
``.venv-openvino`` (built by ``scripts/setup_openvino.sh``). Serving the IR needs only
openvino-genai. The cache folder is ``$ORCHESTR_CACHE_DIR/models/<name>-openvino-<format>-<key>``.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

from orchestr.engine.cache import build_once, is_complete
from orchestr.engine.loader import ModelLoadError, models_cache_dir, resolve_model_path

REPO = Path(__file__).resolve().parents[2]
WEIGHT_FORMATS = ("fp32", "fp16", "int8", "int4")
EXPORT_HINT = ("exporting a model to OpenVINO IR needs optimum-intel: run scripts/setup_openvino.sh "
               "(builds .venv-openvino) or set ORCHESTR_OPENVINO_EXPORT_PYTHON to a Python that has it")
_CACHE_FORMAT = "v1"
IR_FILES = ("openvino_model.xml", "openvino_model.bin", "openvino_tokenizer.xml", "openvino_detokenizer.xml")


def is_ir_folder(path: Path) -> bool:
    return all((path / f).is_file() for f in IR_FILES)


def export_python() -> str | None:
    """An interpreter that can run optimum-intel's exporter, or None."""
    env = os.environ.get("ORCHESTR_OPENVINO_EXPORT_PYTHON")
    if env:
        return env
    if importlib.util.find_spec("optimum") is not None and importlib.util.find_spec("optimum.intel") is not None:
        return sys.executable
    venv = REPO / ".venv-openvino" / "bin" / "python"
    return str(venv) if venv.is_file() else None


def ir_cache_name(hf_folder: Path, weight_format: str) -> str:
    key = hashlib.sha1(f"{hf_folder.resolve()}|{_CACHE_FORMAT}".encode()).hexdigest()[:10]
    return f"{hf_folder.name}-openvino-{weight_format}-{key}"


def export_command(python: str, hf_folder: Path, out: Path, weight_format: str,
                   trust_remote_code: bool = False) -> list[str]:
    cmd = [python, "-m", "optimum.commands.optimum_cli", "export", "openvino", "-m", str(hf_folder),
           "--task", "text-generation-with-past", "--weight-format", weight_format]
    if weight_format in ("int8", "int4"):
        cmd.append("--sym")
    if trust_remote_code:
        cmd.append("--trust-remote-code")
    return [*cmd, str(out)]


def resolve_openvino_model(model_path: str, weight_format: str = "fp32", trust_remote_code: bool = False) -> Path:
    """An OpenVINO IR folder for ``model_path``: the path itself when it already is one, else
    the cached export of its Hugging Face folder (made once, under a file lock)."""
    if weight_format not in WEIGHT_FORMATS:
        raise ModelLoadError(f"unknown OpenVINO weight format {weight_format!r} ({' | '.join(WEIGHT_FORMATS)})")
    local = Path(str(model_path)).expanduser()
    if local.is_dir() and is_ir_folder(local):
        return local.resolve()
    hf_folder = Path(resolve_model_path(model_path))
    name = ir_cache_name(hf_folder, weight_format)
    target = models_cache_dir() / name
    if is_complete(target):
        return target
    python = export_python()
    if python is None:
        raise ModelLoadError(EXPORT_HINT)

    def export(out: Path) -> None:
        cmd = export_command(python, hf_folder, out, weight_format, trust_remote_code)
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0 or not is_ir_folder(out):
            tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-5:])
            raise ModelLoadError(f"OpenVINO export of {hf_folder} failed ({' '.join(cmd[:6])} ...):\n{tail}")

    return build_once(target, export, str(hf_folder), lock_timeout=3600,
                      announce=f"exporting {hf_folder} to OpenVINO IR ({weight_format} weights) at {target} "
                               "(once; a minute or two)")
