"""The C kernels of `csrc/dsa_cpu.c`: built on first use, called through ctypes.

Why C at all: see the top of `csrc/dsa_cpu.c` (sparse attention and top-k are bound by memory
traffic that torch ops cannot avoid). Why ctypes and not a torch extension: the source needs only
a C compiler (no torch headers, no ninja) and builds in about a second.

The shared object is built with the system compiler (``$CC`` or ``cc``) for this machine
(``-march=native``) into ``<cache>/kernels/dsa_cpu-<hash>.so``; the hash covers the source, the
flags, the compiler and the CPU's feature flags, so a cache shared between machines never hands one
a library built for another. ``DSPARITY_NATIVE=0`` turns the kernels off; without a compiler they
are off and `unavailable_reason()` says why. Every call takes contiguous CPU tensors, works on a
range of rows and allocates its own scratch, so rows are split across torch's thread count.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

SOURCE = Path(__file__).with_name("csrc") / "dsa_cpu.c"
FLAGS = ["-O3", "-ffp-contract=fast", "-fopenmp-simd", "-fno-math-errno", "-fPIC", "-shared",
         "-std=c11"]
X86_FLAGS = ["-march=native", "-mprefer-vector-width=512"]  # gcc defaults to 256-bit vectors
DTYPE_CODES = {torch.float32: 0, torch.bfloat16: 1, torch.float16: 2}
MIN_ROWS_PER_THREAD = 8

_lock = threading.Lock()
_lib: ctypes.CDLL | None = None
_reason: str | None = None  # why the library is unavailable, once known
_pool: ThreadPoolExecutor | None = None


def _forget_pool() -> None:
    global _pool
    _pool = None  # a forked child has none of the parent's threads: start a new pool on demand


os.register_at_fork(after_in_child=_forget_pool)


def _flags() -> list[str]:
    return FLAGS + (X86_FLAGS if platform.machine() in ("x86_64", "AMD64") else ["-mcpu=native"])


def _cpu_flags() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return line
    except OSError:
        pass
    return platform.processor()


def library_path(compiler: str) -> Path:
    from dsparity.cache import cache_root

    version = subprocess.run([compiler, "--version"], capture_output=True, text=True).stdout
    key = hashlib.sha256("\0".join([SOURCE.read_text(), " ".join(_flags()), version, platform.machine(),
                                    _cpu_flags()]).encode()).hexdigest()[:16]
    return cache_root() / "kernels" / f"dsa_cpu-{key}.so"


def _build(compiler: str, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=target.parent)
    os.close(fd)
    try:
        done = subprocess.run([compiler, *_flags(), "-o", tmp, str(SOURCE)], capture_output=True,
                              text=True)
        if done.returncode:
            raise OSError(f"{compiler} failed: {done.stderr.strip()[-500:]}")
        os.replace(tmp, target)  # atomic: concurrent builders each install a complete file
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _declare(lib: ctypes.CDLL) -> ctypes.CDLL:
    p, n, f, i = ctypes.c_void_p, ctypes.c_int64, ctypes.c_float, ctypes.c_int
    lib.dsa_index_reduce.argtypes = [p, n, n, n, n, p, f, p, n, n, n, i]
    lib.dsa_index_reduce.restype = None
    lib.dsa_topk_rows.argtypes = [p, n, n, n, i, p, n, n]
    lib.dsa_topk_rows.restype = i
    lib.dsa_sparse_attention.argtypes = [p, p, n, n, p, n, n, i, p, p, n, n, n, n, n, n, f, n, n]
    lib.dsa_sparse_attention.restype = i
    return lib


def load() -> ctypes.CDLL | None:
    """The built library, or None (then `unavailable_reason()` says why). Builds it once."""
    global _lib, _reason
    if _lib is not None or _reason is not None:
        return _lib
    with _lock:
        if _lib is not None or _reason is not None:
            return _lib
        if os.environ.get("DSPARITY_NATIVE", "1").strip().lower() in ("0", "false", "no", "off"):
            _reason = "turned off by DSPARITY_NATIVE"
            return None
        compiler = shutil.which(os.environ.get("CC", "cc")) or shutil.which("gcc")
        if compiler is None:
            _reason = "no C compiler found (install gcc, or set CC)"
            return None
        try:
            target = library_path(compiler)
            if not target.exists():
                _build(compiler, target)
            _lib = _declare(ctypes.CDLL(str(target)))
        except OSError as exc:
            _reason = f"could not build {SOURCE.name}: {exc}"
        return _lib


def available() -> bool:
    return load() is not None


def unavailable_reason() -> str | None:
    load()
    return _reason


def describe() -> str:
    """One line for benchmark and report headers: which CPU kernels run."""
    return "C kernels (native.py)" if available() else f"torch fallback ({unavailable_reason()})"


def _lib_or_raise() -> ctypes.CDLL:
    lib = load()
    if lib is None:
        raise RuntimeError(f"native DSA kernels unavailable: {_reason}")
    return lib


def _split(rows: int, fn) -> None:
    """fn(r0, r1) over [0, rows) on up to torch.get_num_threads() threads (ctypes drops the GIL)."""
    global _pool
    workers = max(1, min(torch.get_num_threads(), rows // MIN_ROWS_PER_THREAD))
    if workers == 1:
        fn(0, rows)
        return
    if _pool is None:
        _pool = ThreadPoolExecutor(max_workers=os.cpu_count() or 1, thread_name_prefix="dsa-native")
    bounds = [rows * i // workers for i in range(workers + 1)]
    for job in [_pool.submit(fn, a, b) for a, b in zip(bounds, bounds[1:], strict=False) if b > a]:
        job.result()


def _check(code: int, what: str) -> None:
    if code:
        raise MemoryError(f"native {what}: could not allocate scratch memory")


def index_reduce(logits: torch.Tensor, w: torch.Tensor, scale: float, out: torch.Tensor, col0: int,
                 pos0: int, causal: bool) -> None:
    """out[r, col0 + j] = scale * sum_h w[r, h] ReLU(logits[r*H + h, j]), -inf in the future.

    logits [R*H, n] fp32 (rows contiguous), w [R, H] fp32 contiguous, out [R, >= col0 + n] fp32
    with contiguous rows; query row r sits at absolute position pos0 + r.
    """
    r, h = w.shape
    n = logits.shape[1]
    _lib_or_raise().dsa_index_reduce(logits.data_ptr(), r, h, n, logits.stride(0), w.data_ptr(),
                                     scale, out.data_ptr(), out.stride(0), col0, pos0, int(causal))


def topk_rows(scores: torch.Tensor, k: int, *, ordered: bool = True,
              out: torch.Tensor | None = None) -> torch.Tensor:
    """Reference top-k of each row of [R, N] scores -> [R, k] int32, -1 padded.

    fp32, or bf16/fp16 (upcast exactly); float64 would be rounded, so it is refused."""
    lib = _lib_or_raise()
    r, n = scores.shape
    if scores.dtype == torch.float64:
        raise TypeError("native top-k computes in fp32; float64 scores need the torch path")
    if scores.stride(1) != 1 or scores.dtype != torch.float32:
        scores = scores.float().contiguous()
    if out is None:
        out = torch.empty(r, k, dtype=torch.int32)
    if out.shape != (r, k) or out.dtype != torch.int32 or (r > 1 and out.stride(0) != k) or \
            out.stride(1) != 1:
        raise ValueError(f"top-k output must be a row-contiguous int32 [{r}, {k}] tensor")
    ptr, ld, optr = scores.data_ptr(), scores.stride(0), out.data_ptr()
    _split(r, lambda a, b: _check(lib.dsa_topk_rows(ptr, n, ld, k, int(ordered), optr, a, b), "top-k"))
    return out


def _rows_view(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """[T, H, D] in `dtype` with a contiguous last dimension, copied only when it must be."""
    x = x.to(dtype)
    return x if x.stride(-1) == 1 else x.contiguous()


def sparse_attention(q, k, v, indices, *, scale: float | None = None) -> torch.Tensor:
    """Same contract as `reference.sparse_attention`; K/V read in place (fp32, bf16 or fp16).

    K and V may be any strided view whose last dimension is contiguous (a transposed [B, Hkv, T, D]
    KV cache is read without a copy, which in decode would cost more than the attention itself).
    q is computed in fp32 (float64 inputs are not supported: callers route them elsewhere); the
    output comes back in q's dtype. Slots outside [0, T) are ignored like -1.
    """
    lib = _lib_or_raise()
    b, s, hq, d = q.shape
    t, hkv, dv = k.shape[1], k.shape[2], v.shape[3]
    if hq % hkv:
        raise ValueError(f"{hq} query heads do not split evenly over {hkv} KV heads")
    kw = indices.shape[-1]
    sc = d**-0.5 if scale is None else scale
    kv_dtype = k.dtype if k.dtype in DTYPE_CODES and v.dtype == k.dtype else torch.float32
    out = torch.empty(b, s, hq, dv, dtype=torch.float32)
    for bi in range(b):
        qb = q[bi].to(torch.float32).contiguous()
        kb, vb = _rows_view(k[bi], kv_dtype), _rows_view(v[bi], kv_dtype)
        ib = indices[bi].to(torch.int32).contiguous()
        ob = out[bi]
        args = (qb.data_ptr(), kb.data_ptr(), kb.stride(0), kb.stride(1), vb.data_ptr(), vb.stride(0),
                vb.stride(1), DTYPE_CODES[kv_dtype], ib.data_ptr(), ob.data_ptr(), t, hq, hkv, d, dv,
                kw, sc)
        _split(s, lambda a, z, args=args: _check(lib.dsa_sparse_attention(*args, a, z), "attention"))
    return out if q.dtype == torch.float32 else out.to(q.dtype)
