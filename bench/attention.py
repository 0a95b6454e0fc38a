#!/usr/bin/env python
"""One attention layer, dense vs DSA sparse, measured side by side in one run.

    python bench/attention.py                 # CPU, full default (prefill 2K..32K, decode 4K..128K)
    python bench/attention.py --quick --json  # under two minutes; last line is one JSON object
    python bench/attention.py --crossover     # fine sweep: masked dense vs gathered sparse attention
    python bench/attention.py --gpu --json    # H200: Triton vs SDPA flash, 8K..128K (bench/attention_gpu.sh)

Default shapes (`--config FILE.json` overrides any of them): 16 query heads sharing one KV head
(DSA's MLA runs as MQA), D = Dv = 128, indexer H_I = 4, d_I = 64, k = 2048: per (query, key) pair
the indexer costs 2*4*64 = 512 FLOPs against 2*16*(128+128) = 8192 for attention, 16x less
(DeepSeek's model: 17x). Extra rows: GQA (16 q / 4 kv heads), MHA (16 / 16), k = 512.

Dense side: the fastest dense path available. Prefill: SDPA with is_causal (flash kernel on
CPU). Decode (one query): a plain matmul-softmax-matmul over the cache; SDPA's bf16 single-query
CPU path is 4-5x slower and would flatter the ratio. Sparse side: the dispatcher's CPU kernels,
fused indexer + top-k (`indexer_topk`, never the L x L matrix) then sparse attention over the
selected rows ("gathered"); "masked" is the same DSA attention computed as masked dense SDPA;
"choice" is the path `dsparity.kernels.dispatch` picks, compared with the better of the two. The
CPU kernels are the C ones of `dsparity/kernels/native.py` (built on first use);
``DSPARITY_NATIVE=0`` times the blocked torch fallback instead.

Times are medians over repeats, one thread by default (a shared 2-core box: see
reference/stack.md); GFLOP/s count useful FLOPs only (causal pairs, selected pairs) and are set
against an fp32/bf16 matmul measured in the same run; peak memory is the largest rise of the
process's resident set during a call (sampled every 0.5 ms; large blocks are mmapped so freed
memory is returned, see MALLOC_MMAP_THRESHOLD_ below).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import threading
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

if "MALLOC_MMAP_THRESHOLD_" not in os.environ and "--gpu" not in sys.argv:
    # Blocks >= 4 MiB come from mmap and go back to the OS on free, so the resident set follows
    # live memory and the sampled peak means something. Re-exec once with it set.
    os.environ["MALLOC_MMAP_THRESHOLD_"] = str(4 << 20)
    os.execv(sys.executable, [sys.executable, *sys.argv])

import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from dsparity.kernels import cpu as cpu_kernels  # noqa: E402
from dsparity.kernels import dispatch, native  # noqa: E402
from dsparity.kernels.cost import machine_description  # noqa: E402


@dataclass(frozen=True)
class Shape:
    name: str = "MQA"
    hq: int = 16
    hkv: int = 1
    d: int = 128
    dv: int = 128
    hi: int = 4
    di: int = 64
    topk: int = 2048


DEFAULT = Shape()
EXTRA = [replace(DEFAULT, name="GQA", hkv=4), replace(DEFAULT, name="MHA", hkv=16),
         replace(DEFAULT, name="MQA k=512", topk=512)]
PREFILL = [2048, 4096, 8192, 16384, 32768]
DECODE = [4096, 8192, 16384, 32768, 65536, 131072]
EXTRA_PREFILL, EXTRA_DECODE = 16384, 65536
MHA_PREFILL = 8192  # MHA gathers 16x the bytes; 8K keeps the run short and still shows the trend


class PeakRSS:
    """Largest rise of the resident set over the value at entry, sampled in a thread."""

    def __init__(self) -> None:
        self.page = os.sysconf("SC_PAGE_SIZE")

    def _rss(self) -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * self.page

    def __enter__(self):
        self.base = self._rss()
        self.peak = self.base
        self.stop = False
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        return self

    def _run(self) -> None:
        while not self.stop:
            self.peak = max(self.peak, self._rss())
            time.sleep(0.0005)

    def __exit__(self, *exc) -> None:
        self.stop = True
        self.thread.join()
        self.peak = max(self.peak, self._rss())

    @property
    def mib(self) -> float:
        return (self.peak - self.base) / 2**20


def measure(fn, reps: int, sync=None, warmup: bool = True) -> tuple[float, float, object]:
    """(median seconds, peak MiB, last result) over `reps` timed calls after one warm-up."""
    if warmup:
        result = fn()
        if sync:
            sync()
        del result
    times, peak = [], 0.0
    for _ in range(reps):
        with PeakRSS() as mem:
            t0 = time.perf_counter()
            result = fn()
            if sync:
                sync()
            times.append(time.perf_counter() - t0)
        peak = max(peak, mem.mib)
    return statistics.median(times), peak, result


def matmul_gflops(dtype, device="cpu", n=2048, reps=3) -> float:
    a = torch.randn(n, n, dtype=dtype, device=device)
    b = torch.randn(n, n, dtype=dtype, device=device)
    sync = torch.cuda.synchronize if device == "cuda" else None
    t, _, _ = measure(lambda: a @ b, reps, sync)
    return 2 * n**3 / t / 1e9


def inputs(shape: Shape, s: int, t: int, dtype, device="cpu", seed=0):
    g = torch.Generator(device="cpu").manual_seed(seed)

    def rnd(*size):
        return torch.randn(*size, generator=g).to(device=device, dtype=dtype)

    return dict(q=rnd(1, s, shape.hq, shape.d), k=rnd(1, t, shape.hkv, shape.d),
                v=rnd(1, t, shape.hkv, shape.dv), qi=rnd(1, s, shape.hi, shape.di),
                ki=rnd(1, t, shape.di), w=rnd(1, s, shape.hi))


def dense_prefill(x):
    q, k, v = (x[n].transpose(1, 2) for n in "qkv")
    return torch.nn.functional.scaled_dot_product_attention(
        q, k, v, is_causal=True, enable_gqa=k.shape[1] != q.shape[1])


def dense_decode(x):
    """One query over the whole cache as plain matmuls: [Hkv, G, D] x [Hkv, D, T]."""
    q, k, v = x["q"][0, 0], x["k"][0], x["v"][0]  # [Hq, D], [T, Hkv, D]
    hkv = k.shape[1]
    qg = q.view(hkv, -1, q.shape[-1])
    logits = torch.matmul(qg, k.permute(1, 2, 0)) * q.shape[-1] ** -0.5  # [Hkv, G, T]
    probs = torch.softmax(logits.float(), dim=-1).to(v.dtype)
    return torch.matmul(probs, v.permute(1, 0, 2))  # [Hkv, G, Dv]


def flops(shape: Shape, s: int, t: int) -> tuple[float, float]:
    """(dense, sparse) useful FLOPs: causal pairs for dense; indexer pairs + selected pairs."""
    per_pair_attn = 2 * shape.hq * (shape.d + shape.dv)
    per_pair_idx = 2 * shape.hi * shape.di + 2 * shape.hi  # dot products + weighted ReLU sum
    seen = [t - s + i + 1 for i in range(s)]
    pairs = sum(seen)
    selected = sum(min(n, shape.topk) for n in seen)
    return per_pair_attn * pairs, per_pair_idx * pairs + per_pair_attn * selected


def run_case(shape: Shape, kind: str, length: int, dtype, reps: int, matmul: float,
             with_masked: bool = True, warmup: bool = True) -> dict:
    s = length if kind == "prefill" else 1
    x = inputs(shape, s, length, dtype)
    dense_fn = dense_prefill if kind == "prefill" else dense_decode
    t_dense, m_dense, _ = measure(lambda: dense_fn(x), reps, warmup=warmup)
    t_idx, m_idx, idx = measure(
        lambda: cpu_kernels.indexer_topk(x["qi"], x["ki"], x["w"], shape.topk, ordered=False), reps,
        warmup=warmup)
    t_gather, m_gather, _ = measure(lambda: cpu_kernels.sparse_attention(x["q"], x["k"], x["v"], idx),
                                    reps, warmup=warmup)
    t_masked = m_masked = None
    if with_masked:
        t_masked, m_masked, _ = measure(
            lambda: cpu_kernels.masked_dense_attention(x["q"], x["k"], x["v"], idx), reps)
    choice = dispatch.choose("attention", x["q"], x["k"], x["v"], s=s, t=length, k=shape.topk,
                             mode="auto")
    t_sparse = t_idx + t_gather
    t_choice = t_idx + (t_masked if choice == "dense" and t_masked is not None else t_gather)
    options = [t_sparse] + ([t_idx + t_masked] if t_masked is not None else [])
    f_dense, f_sparse = flops(shape, s, length)
    return dict(
        layout=shape.name, kind=kind, L=length, k=shape.topk, dense_ms=t_dense * 1e3,
        sparse_ms=t_sparse * 1e3, indexer_topk_ms=t_idx * 1e3, attn_gathered_ms=t_gather * 1e3,
        attn_masked_ms=None if t_masked is None else t_masked * 1e3,
        speedup=t_dense / t_sparse, choice="masked" if choice == "dense" else "gathered",
        choice_over_best=t_choice / min(options),
        dense_gflops=f_dense / t_dense / 1e9, sparse_gflops=f_sparse / t_sparse / 1e9,
        dense_pct_matmul=100 * f_dense / t_dense / 1e9 / matmul,
        sparse_pct_matmul=100 * f_sparse / t_sparse / 1e9 / matmul,
        dense_peak_mib=m_dense, sparse_peak_mib=max(m_idx, m_gather),
        masked_peak_mib=m_masked)


def fmt_table(rows: list[dict]) -> str:
    head = ("layout", "kind", "L", "k", "dense ms", "sparse ms", "idx+topk", "attn", "masked",
            "dense/sparse", "choice", "choice/best", "GF/s d", "GF/s s", "MiB d", "MiB s")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        masked = "-" if r["attn_masked_ms"] is None else f"{r['attn_masked_ms']:.1f}"
        lines.append("| " + " | ".join([
            r["layout"], r["kind"], f"{r['L'] // 1024}K", str(r["k"]), f"{r['dense_ms']:.1f}",
            f"{r['sparse_ms']:.1f}", f"{r['indexer_topk_ms']:.1f}", f"{r['attn_gathered_ms']:.1f}",
            masked, f"{r['speedup']:.2f}x", r["choice"], f"{r['choice_over_best']:.2f}",
            f"{r['dense_gflops']:.0f}", f"{r['sparse_gflops']:.0f}", f"{r['dense_peak_mib']:.0f}",
            f"{r['sparse_peak_mib']:.0f}"]) + " |")
    return "\n".join(lines)


def machine() -> str:
    return (f"{machine_description()}, torch {torch.__version__}, {torch.get_num_threads()} thread(s), "
            f"load average {os.getloadavg()[0]:.1f}; sparse side: {native.describe()}")


def cpu_main(args) -> dict:
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[args.dtype]
    shape = DEFAULT
    extra = EXTRA
    if args.config:
        cfg = json.loads(Path(args.config).read_text())
        shape = replace(DEFAULT, **cfg.get("shape", {}))
        extra = [replace(shape, **e) for e in cfg.get("extra", [])] if "extra" in cfg else extra
    if args.quick:
        prefill, decode, extra, reps = [4096, 32768], [8192, 65536], [], 1
    else:
        prefill, decode, reps = PREFILL, DECODE, args.reps
    if args.prefill:
        prefill = [int(v) for v in args.prefill.split(",")]
    if args.decode:
        decode = [int(v) for v in args.decode.split(",")]
    print(f"machine: {machine()}", flush=True)
    mm = matmul_gflops(dtype)
    print(f"matmul 2048^3 {args.dtype}: {mm:.0f} GFLOP/s (same run)", flush=True)
    rows = []

    def add(row):
        rows.append(row)
        print(fmt_table([row]).splitlines()[-1], flush=True)

    print(fmt_table([])[:-1], flush=True)
    for length in decode:
        add(run_case(shape, "decode", length, dtype, max(reps, 5), mm))
    for length in prefill:
        # Masked dense at 32K is a 1 GiB mask and a full (not causal-skipping) SDPA: at least the
        # dense time; measured up to 16K.
        # --quick: the long prefill runs once without a warm-up (a 30-40 s call on this CPU).
        add(run_case(shape, "prefill", length, dtype, reps if length < 32768 else max(1, reps - 1),
                     mm, with_masked=length <= 16384, warmup=not (args.quick and length > 8192)))
    for ex in extra:
        add(run_case(ex, "decode", EXTRA_DECODE, dtype, max(reps, 3), mm))
        # Masked measured too: it is what the dispatcher picks for MHA prefill.
        add(run_case(ex, "prefill", MHA_PREFILL if ex.name == "MHA" else EXTRA_PREFILL, dtype,
                     1 if args.quick else max(1, reps - 1), mm))
    print()
    print(fmt_table(rows))

    def pick(kind, length):
        for r in rows:
            if r["layout"] == shape.name and r["kind"] == kind and r["L"] == length and \
                    r["k"] == shape.topk:
                return r
        return None

    pf, dc = pick("prefill", 32768), pick("decode", 65536)
    lin = [(r["L"], r["sparse_peak_mib"]) for r in rows
           if r["layout"] == shape.name and r["kind"] == "prefill" and r["k"] == shape.topk]
    return dict(
        mode="cpu", machine=machine(), kernels=native.describe(), dtype=args.dtype,
        threads=torch.get_num_threads(), shape=asdict(shape), matmul_gflops=mm,
        prefill_speedup=pf["speedup"] if pf else None, decode_speedup=dc["speedup"] if dc else None,
        max_choice_over_best=max(r["choice_over_best"] for r in rows),
        dispatch_work_ratio={f"{kern}/{phase}": r for (kern, phase), r in dispatch.WORK_RATIO.items()},
        sparse_prefill_peak_mib_by_L=lin, rows=rows)


def crossover_main(args) -> dict:
    """Masked dense vs gathered sparse attention (given indices) over a fine grid of lengths."""
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[args.dtype]
    out = {}
    for kind, grid in (("decode", [512, 1024, 2048, 3072, 4096, 6144, 8192]),
                       ("prefill", [1024, 2048, 3072, 4096, 6144, 8192, 12288])):
        res = []
        for length in grid:
            s = length if kind == "prefill" else 1
            x = inputs(DEFAULT, s, length, dtype)
            idx = cpu_kernels.indexer_topk(x["qi"], x["ki"], x["w"], DEFAULT.topk, ordered=False)
            reps = 5 if kind == "decode" else 3
            tg, _, _ = measure(lambda x=x, idx=idx: cpu_kernels.sparse_attention(
                x["q"], x["k"], x["v"], idx), reps)
            tm, _, _ = measure(lambda x=x, idx=idx: cpu_kernels.masked_dense_attention(
                x["q"], x["k"], x["v"], idx), reps)
            res.append(dict(L=length, gathered_ms=tg * 1e3, masked_ms=tm * 1e3))
            print(f"{kind:8s} L={length:6d} gathered {tg * 1e3:9.2f} ms  masked {tm * 1e3:9.2f} ms  "
                  f"masked/gathered {tm / tg:5.2f}", flush=True)
        first = next((r["L"] for r in res if r["gathered_ms"] < r["masked_ms"]), None)
        out[kind] = dict(first_L_where_gathered_wins=first, points=res)
    return dict(mode="crossover", machine=machine(), dtype=args.dtype, **out)


def gpu_main(args) -> dict:
    from dsparity.kernels import triton_kernels

    dev = "cuda"
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[args.dtype if args.dtype != "fp32"
                                                            or args.gpu_fp32 else "bf16"]
    sync = torch.cuda.synchronize
    shape = DEFAULT
    prefill = [int(v) for v in args.prefill.split(",")] if args.prefill else \
        ([8192, 65536] if args.quick else [8192, 16384, 32768, 65536, 131072])
    decode = [int(v) for v in args.decode.split(",")] if args.decode else \
        ([8192, 65536] if args.quick else [8192, 16384, 32768, 65536, 131072])
    name = torch.cuda.get_device_name()
    mm = matmul_gflops(dtype, dev, n=8192, reps=5)
    print(f"device: {name}, torch {torch.__version__}; matmul 8192^3 {dtype}: {mm / 1e3:.0f} TFLOP/s",
          flush=True)
    from torch.nn.attention import SDPBackend, sdpa_kernel

    rows = []
    for kind, grid in (("decode", decode), ("prefill", prefill)):
        for length in grid:
            s = length if kind == "prefill" else 1
            x = inputs(shape, s, length, dtype, dev)

            def dense(x=x, s=s):
                q, k, v = (x[n].transpose(1, 2) for n in "qkv")
                if s == 1:
                    return dense_decode(x)
                with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
                    return torch.nn.functional.scaled_dot_product_attention(
                        q, k.expand(-1, q.shape[1], -1, -1), v.expand(-1, q.shape[1], -1, -1),
                        is_causal=True)

            def timed(fn, reps=args.reps + 2):
                torch.cuda.reset_peak_memory_stats()
                base = torch.cuda.memory_allocated()
                fn()
                sync()
                ts = []
                for _ in range(reps):
                    a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                    a.record()
                    fn()
                    b.record()
                    sync()
                    ts.append(a.elapsed_time(b))
                return statistics.median(ts), (torch.cuda.max_memory_allocated() - base) / 2**20

            td, md = timed(dense)
            idx = triton_kernels.indexer_topk(x["qi"], x["ki"], x["w"], shape.topk, ordered=False)
            ti, mi = timed(lambda x=x: triton_kernels.indexer_topk(x["qi"], x["ki"], x["w"],
                                                                   shape.topk, ordered=False))
            ta, ma = timed(lambda x=x, idx=idx: triton_kernels.sparse_attention(x["q"], x["k"],
                                                                                x["v"], idx))
            f_dense, f_sparse = flops(shape, s, length)
            row = dict(kind=kind, L=length, dense_ms=td, sparse_ms=ti + ta, indexer_topk_ms=ti,
                       attn_ms=ta, speedup=td / (ti + ta), attn_speedup=td / ta,
                       dense_tflops=f_dense / td / 1e9, sparse_tflops=f_sparse / (ti + ta) / 1e9,
                       dense_peak_mib=md, sparse_peak_mib=max(mi, ma))
            rows.append(row)
            print(f"{kind:8s} L={length:7d} dense {td:9.3f} ms  sparse {ti + ta:9.3f} ms "
                  f"(idx+topk {ti:8.3f}, attn {ta:8.3f})  dense/sparse {row['speedup']:5.2f}x  "
                  f"dense/attn {row['attn_speedup']:5.2f}x  TFLOP/s d {row['dense_tflops']:6.1f} "
                  f"s {row['sparse_tflops']:6.1f}  MiB d {md:8.0f} s {max(mi, ma):8.0f}", flush=True)
            del x, idx
            torch.cuda.empty_cache()

    def pick(kind, length):
        return next((r["speedup"] for r in rows if r["kind"] == kind and r["L"] == length), None)

    return dict(mode="gpu", device=name, dtype=str(dtype), matmul_tflops=mm / 1e3,
                prefill_speedup=pick("prefill", 65536), decode_speedup=pick("decode", 65536),
                rows=rows)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="a run under two minutes")
    p.add_argument("--json", action="store_true", help="end the output with one JSON object")
    p.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1: quiet and fair)")
    p.add_argument("--reps", type=int, default=3, help="timed repeats per measurement (median)")
    p.add_argument("--prefill", help="comma-separated prefill lengths")
    p.add_argument("--decode", help="comma-separated decode lengths")
    p.add_argument("--config", help="JSON file: {\"shape\": {...}, \"extra\": [{...}, ...]}")
    p.add_argument("--crossover", action="store_true", help="measure the dispatcher's crossovers")
    p.add_argument("--gpu", action="store_true", help="CUDA: Triton kernels vs SDPA flash")
    p.add_argument("--gpu-fp32", action="store_true", help="with --gpu: allow --dtype fp32")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.gpu:
        result = gpu_main(args)
    elif args.crossover:
        result = crossover_main(args)
    else:
        result = cpu_main(args)
    if args.json:
        print(json.dumps(result, default=float))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
