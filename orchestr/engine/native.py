"""orchestr's C kernels: compiled on first use with the system's C compiler, cached, loaded
with ctypes.

Why C and not a torch extension: a plain C file with a C ABI builds in about a second with
``cc`` alone (no torch headers, no ninja), and the kernels only need raw pointers. The
library is built for this CPU (``-march=native``) and cached under
``~/.cache/orchestr/kernels`` (``ORCHESTR_CACHE_DIR``), keyed by the source, the compiler and
the CPU's flags. Without a compiler, or with ``ORCHESTR_NATIVE_KERNELS=0``, the engine uses
its pure torch path: same results, slower.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path

import torch

from orchestr.engine.cache import cache_dir

log = logging.getLogger(__name__)

_SOURCE = Path(__file__).with_name("kernels") / "cpu_kernels.c"
_lock = threading.Lock()
_lib: ctypes.CDLL | None = None
_tried = False

_i64 = ctypes.c_int64
_ptr = ctypes.c_void_p


def _cpu_flags() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""


def _compiler() -> str | None:
    for name in (os.environ.get("CC"), "cc", "gcc", "clang"):
        if name and shutil.which(name):
            return name
    return None


def _compiler_version(cc: str) -> str:
    try:
        return subprocess.run([cc, "--version"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return ""


# -ffast-math's parts, spelled out: given as one flag, GCC < 13 links crtfastmath.o into the shared
# library, whose constructor turns on flush-to-zero/denormals-are-zero for the whole process that
# loads it (every float in the host's Python, numpy and torch then loses its subnormals).
_FAST_MATH = ["-fno-math-errno", "-fno-trapping-math", "-fassociative-math", "-fno-signed-zeros",
              "-freciprocal-math", "-ffinite-math-only", "-fno-rounding-math", "-fcx-limited-range"]
_CFLAGS = ["-O3", "-march=native", *_FAST_MATH, "-fopenmp", "-shared", "-fPIC"]
# libmvec: glibc's vector math (the AVX-512 softmax calls its 16-lane expf; x86-64 glibc ships it)
_LIBS = ["-lm", "-lmvec"] if platform.machine() in ("x86_64", "AMD64") else ["-lm"]


def _build(cc: str) -> Path:
    source = _SOURCE.read_bytes()
    key = hashlib.sha256(source + " ".join(_CFLAGS + _LIBS).encode() + _compiler_version(cc).encode()
                         + _cpu_flags().encode()).hexdigest()[:16]
    target = cache_dir() / "kernels" / f"cpu_kernels-{key}.so"
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        out = Path(tmp) / target.name
        cmd = [cc, *_CFLAGS, str(_SOURCE), "-o", str(out), *_LIBS]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stderr.strip()}")
        os.replace(out, target)  # atomic: concurrent builders agree on one file
    log.info("built orchestr's native kernels: %s", target)
    return target


def library() -> ctypes.CDLL | None:
    """The kernels, built and loaded once per process; None when they cannot be had."""
    global _lib, _tried
    if _tried:
        return _lib
    with _lock:
        if _tried:
            return _lib
        _tried = True
        if os.environ.get("ORCHESTR_NATIVE_KERNELS", "1").lower() in ("0", "false", "no", "off"):
            log.info("native kernels off (ORCHESTR_NATIVE_KERNELS); using the torch attention path")
            return None
        cc = _compiler()
        if cc is None:
            log.warning("no C compiler found (cc/gcc/clang): using the slower torch attention path")
            return None
        try:
            lib = ctypes.CDLL(str(_build(cc)))
        except (OSError, RuntimeError, subprocess.SubprocessError) as exc:
            log.warning("cannot build orchestr's native kernels, using the torch attention path: %s", exc)
            return None
        lib.orchestr_paged_decode.restype = ctypes.c_int
        lib.orchestr_paged_decode.argtypes = [ctypes.c_int, _ptr, _i64, _i64, _ptr, _ptr, _i64, _i64, _ptr, _i64,
                                              _ptr, _ptr, _i64, _i64, _i64, _i64, _i64, _i64, ctypes.c_float]
        lib.orchestr_paged_prefill.restype = ctypes.c_int
        lib.orchestr_paged_prefill.argtypes = [ctypes.c_int, _ptr, _i64, _i64, _ptr, _ptr, _i64, _i64, _ptr, _i64,
                                               _i64, _ptr, _i64, _i64, _i64, _i64, _i64, ctypes.c_float]
        lib.orchestr_rms_norm.restype = None
        lib.orchestr_rms_norm.argtypes = [ctypes.c_int, _ptr, _i64, _ptr, _ptr, _i64, _i64, _i64, ctypes.c_float]
        lib.orchestr_rotary.restype = None
        lib.orchestr_add_rms_norm.restype = None
        lib.orchestr_add_rms_norm.argtypes = [ctypes.c_int, _ptr, _i64, _ptr, _i64, _ptr, _ptr, _i64, _i64, _i64,
                                              ctypes.c_float]
        lib.orchestr_argmax_rows.restype = None
        lib.orchestr_argmax_rows.argtypes = [ctypes.c_int, _ptr, _i64, _i64, _i64, _ptr]
        lib.orchestr_rotary.argtypes = [ctypes.c_int, _ptr, _i64, _i64, _ptr, _ptr, _i64, _i64, _i64, _i64]
        lib.orchestr_int8_linear.restype = None
        lib.orchestr_int8_linear.argtypes = [_ptr, _i64, _ptr, _ptr, _ptr, _i64, _i64, _i64, _i64]
        _lib = lib
        return _lib


def release_thread_pool() -> bool:
    """Free the calling thread's OpenMP worker threads (``omp_pause_resource_all``), in the
    OpenMP runtime torch and these kernels share; False when that cannot be done here. The
    pool is made again on the thread's next parallel region. See threads.leave_cores_to_engine."""
    lib = library()
    pause = getattr(lib, "omp_pause_resource_all", None) if lib is not None else None
    if pause is None:  # no kernels, or an OpenMP runtime older than 5.0
        return False
    pause.restype = ctypes.c_int
    pause.argtypes = [ctypes.c_int]
    return pause(1) == 0  # omp_pause_soft


def _attention_library(q: torch.Tensor, k_pool: torch.Tensor, v_pool: torch.Tensor) -> ctypes.CDLL | None:
    """The kernels, if they take these attention inputs: CPU, q in the pools' dtype (bf16 or
    fp32) with its last dim contiguous, contiguous pools."""
    lib = library()
    if lib is None or q.device.type != "cpu" or q.dtype != k_pool.dtype or q.dtype not in (torch.bfloat16,
                                                                                              torch.float32):
        return None
    if q.stride(-1) != 1 or not (k_pool.is_contiguous() and v_pool.is_contiguous()):
        return None
    return lib


def paged_decode(q: torch.Tensor, k_pool: torch.Tensor, v_pool: torch.Tensor, slots: torch.Tensor,
                 lens: torch.Tensor, scale: float) -> torch.Tensor | None:
    """Attention of one query token per sequence over its pooled history.

    ``q`` [D, H, d] (any strides, last dim contiguous), pools [slots, KV, d] contiguous,
    ``slots`` [D, width] int64, ``lens`` [D] int64. Returns [D, H, d] in q's dtype, or None
    when the kernel is not available or does not take this shape/dtype (the caller falls back).
    """
    lib = _attention_library(q, k_pool, v_pool)
    if lib is None:
        return None
    slots = slots if slots.is_contiguous() else slots.contiguous()
    lens = lens if lens.is_contiguous() else lens.contiguous()
    d_seqs, heads, head_dim = q.shape
    out = torch.empty((d_seqs, heads, head_dim), dtype=q.dtype)
    rc = lib.orchestr_paged_decode(
        int(q.dtype == torch.bfloat16), q.data_ptr(), q.stride(0), q.stride(1),
        k_pool.data_ptr(), v_pool.data_ptr(), k_pool.stride(0), k_pool.stride(1),
        slots.data_ptr(), slots.stride(0), lens.data_ptr(), out.data_ptr(), out.stride(0), out.stride(1),
        d_seqs, heads, k_pool.shape[1], head_dim, float(scale))
    if rc == -1:
        return None
    if rc != 0:
        raise MemoryError("orchestr_paged_decode: out of memory")
    return out


def paged_prefill(q: torch.Tensor, k_pool: torch.Tensor, v_pool: torch.Tensor, slots: torch.Tensor, start: int,
                  scale: float) -> torch.Tensor | None:
    """Attention of a prefill chunk of one sequence: ``q`` [n, H, d] for positions ``start ..
    start+n-1``, ``slots`` [start + n] the pool slot of each of its positions. Query row r
    attends to positions 0 .. start+r. Returns [n, H, d] in q's dtype, row for row bitwise what
    :func:`paged_decode` gives that token; None when the kernel cannot take it."""
    lib = _attention_library(q, k_pool, v_pool)
    if lib is None:
        return None
    slots = slots if slots.is_contiguous() else slots.contiguous()
    n, heads, head_dim = q.shape
    out = torch.empty((n, heads, head_dim), dtype=q.dtype)
    rc = lib.orchestr_paged_prefill(
        int(q.dtype == torch.bfloat16), q.data_ptr(), q.stride(0), q.stride(1), k_pool.data_ptr(), v_pool.data_ptr(),
        k_pool.stride(0), k_pool.stride(1), slots.data_ptr(), start, n, out.data_ptr(), out.stride(0),
        out.stride(1), heads, k_pool.shape[1], head_dim, float(scale))
    if rc == -1:
        return None
    if rc != 0:
        raise MemoryError("orchestr_paged_prefill: out of memory")
    return out


def _takes(*tensors: torch.Tensor) -> bool:
    """Whether the kernels take these tensors: on CPU, one dtype (bf16 or fp32), last dim contiguous."""
    first = tensors[0]
    return (first.device.type == "cpu" and first.dtype in (torch.bfloat16, torch.float32)
            and all(t.dtype == first.dtype and t.device == first.device and t.stride(-1) == 1 for t in tensors))


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor | None:
    """RMSNorm of the rows of ``x`` (any leading shape) like transformers' ``LlamaRMSNorm``;
    None when the kernel cannot take it."""
    lib = library()
    if lib is None or not _takes(x, weight) or not weight.is_contiguous():
        return None
    rows = x.reshape(-1, x.shape[-1])  # a view for the usual contiguous input
    out = torch.empty_like(rows)
    lib.orchestr_rms_norm(int(x.dtype == torch.bfloat16), rows.data_ptr(), rows.stride(0), weight.data_ptr(),
                          out.data_ptr(), out.stride(0), rows.shape[0], rows.shape[1], float(eps))
    return out.view(x.shape)


def rotary_(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> bool:
    """Rotary embedding in place on ``x`` [T, heads, d] with ``cos``/``sin`` [T, d] in x's
    dtype; False (x untouched) when the kernel cannot take it."""
    lib = library()
    if lib is None or not _takes(x, cos, sin) or cos.stride() != sin.stride() or x.shape[-1] > 256:
        return False
    lib.orchestr_rotary(int(x.dtype == torch.bfloat16), x.data_ptr(), x.stride(0), x.stride(1), cos.data_ptr(),
                        sin.data_ptr(), cos.stride(0), x.shape[0], x.shape[1], x.shape[2])
    return True


def add_rms_norm_(h: torch.Tensor, delta: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor | None:
    """``h += delta`` in place, then RMSNorm of ``h``'s rows (transformers' residual add and
    the next norm in one pass); h/delta [T, n]. None (h untouched) when the kernel cannot take it."""
    lib = library()
    if lib is None or h.dim() != 2 or not _takes(h, delta, weight) or not weight.is_contiguous():
        return None
    out = torch.empty_like(h)
    lib.orchestr_add_rms_norm(int(h.dtype == torch.bfloat16), h.data_ptr(), h.stride(0), delta.data_ptr(),
                              delta.stride(0), weight.data_ptr(), out.data_ptr(), out.stride(0), h.shape[0],
                              h.shape[1], float(eps))
    return out


def argmax_rows(x: torch.Tensor) -> torch.Tensor | None:
    """Index of each row's largest value (first on ties) for x [R, n]; None when the kernel
    cannot take it."""
    lib = library()
    if lib is None or x.dim() != 2 or not _takes(x):
        return None
    idx = torch.empty(x.shape[0], dtype=torch.int64)
    lib.orchestr_argmax_rows(int(x.dtype == torch.bfloat16), x.data_ptr(), x.stride(0), x.shape[0], x.shape[1],
                             idx.data_ptr())
    return idx


def int8_linear(x: torch.Tensor, q: torch.Tensor, scales: torch.Tensor) -> torch.Tensor | None:
    """``x @ dequant(q, scales).T`` for x [M, K] fp32 (last dim contiguous), q int8 [N, K] and
    scales fp32 [N, K / 64], both contiguous; None when the kernel cannot take it."""
    lib = library()
    if (lib is None or x.dim() != 2 or x.dtype != torch.float32 or x.device.type != "cpu" or x.stride(-1) != 1
            or q.shape[1] != x.shape[1] or x.shape[1] % 64 or scales.shape[1] * 64 != q.shape[1]):
        return None
    out = torch.empty((x.shape[0], q.shape[0]), dtype=torch.float32)
    lib.orchestr_int8_linear(x.data_ptr(), x.stride(0), q.data_ptr(), scales.data_ptr(), out.data_ptr(), out.stride(0),
                             x.shape[0], q.shape[0], x.shape[1])
    return out
