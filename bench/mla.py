#!/usr/bin/env python
"""One MLA attention layer on its latent layout, dense vs DSA sparse, measured side by side in one run.

    python bench/mla.py --quick --json   # a few minutes: decode 16K-64K, prefill chunks at 16K, 64K
    python bench/mla.py                  # decode and prefill chunks at 16K, 32K, 64K, full 16K prefill
    python bench/mla.py --gpu --json     # H200: Triton kernels vs SDPA (bench/attention_gpu.sh)

Rows: "decode" = one new token against an L-token cache; "chunk" = a 2048-token prefill chunk at
the end of an L-token context (chunked prefill: the prefill cost per token at position L, what
DeepSeek's Figure 3 plots, at 1/16 of a full 64K prefill's work); "prefill" = all L tokens.

Shapes: DeepSeek-V3.2-Exp's per-head dims (dsa.md §2) with the heads scaled down 8x so that one
layer fits two CPU cores: 16 query heads, kv_lora_rank r = 512, rope 64, nope 128, v 128; indexer
H_I = 8 heads of d_I = 128 (V3.2-Exp: 128 and 64, so the indexer's cost per (query, key) pair
relative to attention is DeepSeek's), k = 2048. The KV cache is the latent, one row of
r + d_R = 576 values per token (FlashMLA's layout), as dsparity's MLA path keeps it.

What each side does, from the cached latent and this step's queries (projections before q_nope /
q_rope and after the per-head output are the same for both and not timed):
- dense, MHA mode ("mha"): decompress K/V per head from the latent (kv_b_proj), SDPA causal
  (what transformers' DeepseekV3 does, and what DeepSeek's service runs for short prefill);
- dense, MQA mode ("mqa"): absorb W^UK into the queries, SDPA over the latent shared by all heads
  (one KV head of 576; in decode the heads are SDPA's query rows), then W^UV;
  the dense baseline of a row is the faster of the two (SDPA-class kernels only; both are shaped so
  that torch's CPU flash kernel runs, see `dense_mha` / `dense_mqa`). In decode the MHA mode would
  decompress the whole cache every step; only MQA is timed there, and a plain matmul-softmax-matmul
  of the same step is printed beside it for reference.
- sparse (dsparity): fused indexer + top-k (`kernels.indexer_topk`, never the [S, T] matrix),
  absorb W^UK, sparse attention over the selected latent rows (`kernels.sparse_attention`: one
  gathered row serves all 16 heads), then W^UV.
Times are medians over repeats on one thread (a shared 2-core box, stack.md); "dense/sparse" is
the ratio measured in the same run.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

if "MALLOC_MMAP_THRESHOLD_" not in os.environ and "--gpu" not in sys.argv:
    # Large blocks from mmap go back to the OS on free, so the sampled resident-set peak follows
    # live memory (bench/attention.py does the same). Re-exec once with it set.
    os.environ["MALLOC_MMAP_THRESHOLD_"] = str(4 << 20)
    os.execv(sys.executable, [sys.executable, *sys.argv])

import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from attention import machine, matmul_gflops, measure  # noqa: E402

from dsparity import kernels  # noqa: E402
from dsparity.kernels import native  # noqa: E402


@dataclass(frozen=True)
class MLAShape:
    heads: int = 16
    kv_lora_rank: int = 512
    rope: int = 64
    nope: int = 128
    v: int = 128
    index_heads: int = 8
    index_dim: int = 128
    topk: int = 2048


SHAPE = MLAShape()


def inputs(sh: MLAShape, s: int, t: int, dtype, device="cpu", seed=0) -> dict:
    g = torch.Generator(device="cpu").manual_seed(seed)

    def rnd(*size, scale=1.0):
        return (torch.randn(*size, generator=g) * scale).to(device=device, dtype=dtype)

    r = sh.kv_lora_rank
    return dict(
        q_nope=rnd(1, s, sh.heads, sh.nope), q_rot=rnd(1, s, sh.heads, sh.rope),
        latent=rnd(1, t, r + sh.rope), w_kv=rnd(sh.heads, sh.nope + sh.v, r, scale=r**-0.5),
        qi=rnd(1, s, sh.index_heads, sh.index_dim), ki=rnd(1, t, sh.index_dim),
        wi=rnd(1, s, sh.index_heads))


def _scale(sh: MLAShape) -> float:
    return (sh.nope + sh.rope) ** -0.5


def _causal(s: int, t: int, device) -> torch.Tensor | None:
    """Bottom-right causal mask [S, T] for a chunk of S queries at the end of T keys (None: S == T,
    SDPA's own is_causal; S == 1: nothing to mask)."""
    if s in (1, t):
        return None
    return torch.arange(t, device=device)[None] <= torch.arange(t - s, t, device=device)[:, None]


def _sdpa(q, k, v, sh: MLAShape) -> torch.Tensor:
    s, t = q.shape[2], k.shape[2]
    return torch.nn.functional.scaled_dot_product_attention(
        q, k, v, attn_mask=_causal(s, t, q.device), is_causal=s == t and s > 1, scale=_scale(sh))


def dense_mha(x: dict, sh: MLAShape) -> torch.Tensor:
    """MHA mode: decompress K/V per head from the latent, SDPA causal -> [1, S, H, v].

    V is zero-padded to K's width (192) and the output cut back, as transformers does for flash
    attention: with unequal widths torch's CPU SDPA leaves the flash kernel for the math fallback,
    which materialises [H, S, T] (4 GiB at 8K) and is several times slower."""
    r = sh.kv_lora_rank
    lat = x["latent"][0]
    t = lat.shape[0]
    kv = torch.matmul(lat[:, :r], x["w_kv"].reshape(-1, r).t()).view(t, sh.heads, sh.nope + sh.v)
    k = torch.cat([kv[..., :sh.nope], lat[:, None, r:].expand(t, sh.heads, sh.rope)], -1)
    v = torch.nn.functional.pad(kv[..., sh.nope:], (0, sh.nope + sh.rope - sh.v))
    q = torch.cat([x["q_nope"][0], x["q_rot"][0]], -1)
    out = _sdpa(q.transpose(0, 1)[None], k.transpose(0, 1)[None], v.transpose(0, 1)[None], sh)
    return out[0, ..., :sh.v].transpose(0, 1)[None]


def absorb(x: dict, sh: MLAShape) -> torch.Tensor:
    """q-bar = [W^UK^T q_nope ; q_rope] per head -> [1, S, H, r + d_R]."""
    q_abs = torch.einsum("bshd,hdr->bshr", x["q_nope"], x["w_kv"][:, :sh.nope])
    return torch.cat([q_abs, x["q_rot"]], -1)


def expand_out(o: torch.Tensor, x: dict, sh: MLAShape) -> torch.Tensor:
    """Latent output [1, S, H, r] -> per-head output [1, S, H, v] (W^UV)."""
    return torch.einsum("bshr,hvr->bshv", o, x["w_kv"][:, sh.nope:])


def dense_mqa(x: dict, sh: MLAShape) -> torch.Tensor:
    """MQA mode: absorbed queries, SDPA over the latent shared by every head -> [1, S, H, v].

    The value passed is the whole latent row (output cut to its first r columns): with equal q/k/v
    widths torch's CPU flash kernel runs, not the math fallback (4x slower in decode, [H, S, T] in
    memory in prefill). Decode folds the heads into SDPA's query axis (every head of one token sees
    the same keys: H query rows of one single-head attention, as FlashMLA's decode treats them);
    prefill keeps heads as heads (causality differs per token), the latent expanded without a copy."""
    r = sh.kv_lora_rank
    q = absorb(x, sh)  # [1, S, H, 576]
    kv = x["latent"][:, None]  # [1, 1, T, 576]
    if q.shape[1] == 1:
        o = torch.nn.functional.scaled_dot_product_attention(
            q.view(1, 1, sh.heads, -1), kv, kv, scale=_scale(sh))  # [1, 1, H, 576]
        return expand_out(o[..., :r], x, sh)
    kvh = kv.expand(1, sh.heads, -1, -1)
    o = _sdpa(q.transpose(1, 2), kvh, kvh, sh)
    return expand_out(o.transpose(1, 2)[..., :r], x, sh)


def dense_mqa_matmul(x: dict, sh: MLAShape) -> torch.Tensor:
    """Decode only, for reference: the same MQA step as plain matmul-softmax-matmul."""
    r = sh.kv_lora_rank
    q = absorb(x, sh)[0, 0]  # [H, 576]
    lat = x["latent"][0]
    probs = torch.softmax((q @ lat.t()).float() * _scale(sh), -1).to(lat.dtype)
    return expand_out((probs @ lat[:, :r])[None, None], x, sh)


def sparse_select(x: dict, sh: MLAShape) -> torch.Tensor:
    return kernels.indexer_topk(x["qi"], x["ki"], x["wi"], sh.topk, ordered=False)


def sparse_attend(x: dict, sh: MLAShape, idx: torch.Tensor) -> torch.Tensor:
    r = sh.kv_lora_rank
    kv = x["latent"][:, :, None]  # [1, T, 1, 576]
    o = kernels.sparse_attention(absorb(x, sh), kv, kv[..., :r], idx, scale=_scale(sh))
    return expand_out(o, x, sh)


def flops(sh: MLAShape, s: int, t: int) -> dict:
    """Useful FLOPs: causal pairs (dense), indexer pairs + selected pairs (sparse)."""
    seen = [t - s + i + 1 for i in range(s)]
    pairs, selected = sum(seen), sum(min(n, sh.topk) for n in seen)
    lat = sh.kv_lora_rank + sh.rope
    return dict(mha=2 * sh.heads * (sh.nope + sh.rope + sh.v) * pairs,
                mqa=2 * sh.heads * (lat + sh.kv_lora_rank) * pairs,
                sparse=(2 * sh.index_heads * sh.index_dim + 2 * sh.index_heads) * pairs
                + 2 * sh.heads * (lat + sh.kv_lora_rank) * selected)


CHUNK = 2048  # query tokens of one prefill chunk


def run_case(sh: MLAShape, kind: str, length: int, dtype, reps: int, warmup: bool = True) -> dict:
    """kind: "decode" (1 query), "chunk" (CHUNK queries at the end of `length` keys: the prefill
    cost per token at that position) or "prefill" (all `length` queries)."""
    s = {"decode": 1, "chunk": min(CHUNK, length), "prefill": length}[kind]
    x = inputs(sh, s, length, dtype)
    times, peaks = {}, {}
    if kind != "decode":  # decode in MHA mode would decompress the whole cache every step
        times["mha"], peaks["mha"], _ = measure(lambda: dense_mha(x, sh), reps, warmup=warmup)
    times["mqa"], peaks["mqa"], _ = measure(lambda: dense_mqa(x, sh), reps, warmup=warmup)
    if kind == "decode":
        times["matmul"], _, _ = measure(lambda: dense_mqa_matmul(x, sh), reps, warmup=warmup)
    t_idx, m_idx, idx = measure(lambda: sparse_select(x, sh), reps, warmup=warmup)
    t_att, m_att, _ = measure(lambda: sparse_attend(x, sh, idx), reps, warmup=warmup)
    dense_mode = min((m for m in ("mha", "mqa") if m in times), key=times.get)
    t_dense, t_sparse = times[dense_mode], t_idx + t_att
    f = flops(sh, s, length)
    row = dict(kind=kind, L=length, S=s, k=sh.topk, dense_mode=dense_mode, dense_ms=t_dense * 1e3,
               mha_ms=times["mha"] * 1e3 if "mha" in times else None, mqa_ms=times["mqa"] * 1e3,
               sparse_ms=t_sparse * 1e3, indexer_topk_ms=t_idx * 1e3, attn_ms=t_att * 1e3,
               speedup=t_dense / t_sparse,
               dense_gflops=f[dense_mode] / t_dense / 1e9, sparse_gflops=f["sparse"] / t_sparse / 1e9,
               dense_peak_mib=peaks[dense_mode], sparse_peak_mib=max(m_idx, m_att))
    if "matmul" in times:
        row.update(matmul_ms=times["matmul"] * 1e3, speedup_vs_matmul=times["matmul"] / t_sparse)
    return row


def fmt_table(rows: list[dict]) -> str:
    head = ("kind", "L", "k", "dense", "dense ms", "MHA ms", "MQA ms", "sparse ms", "idx+topk",
            "attn", "dense/sparse", "GF/s d", "GF/s s", "MiB d", "MiB s")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]

    def ms(v):
        return "-" if v is None else f"{v:.1f}"

    for r in rows:
        lines.append("| " + " | ".join([
            r["kind"], f"{r['L'] // 1024}K", str(r["k"]), r["dense_mode"], ms(r["dense_ms"]),
            ms(r["mha_ms"]), ms(r["mqa_ms"]), ms(r["sparse_ms"]), ms(r["indexer_topk_ms"]),
            ms(r["attn_ms"]), f"{r['speedup']:.2f}x", f"{r['dense_gflops']:.0f}",
            f"{r['sparse_gflops']:.0f}", f"{r['dense_peak_mib']:.0f}",
            f"{r['sparse_peak_mib']:.0f}"]) + " |")
    return "\n".join(lines)


def cpu_main(args) -> dict:
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[args.dtype]
    if args.quick:
        plan = {"decode": [16384, 32768, 65536], "chunk": [16384, 65536], "prefill": []}
    else:
        plan = {"decode": [16384, 32768, 65536], "chunk": [16384, 32768, 65536], "prefill": [16384]}
    for kind in plan:
        given = getattr(args, kind)
        if given is not None:
            plan[kind] = [int(v) for v in given.split(",") if v]
    print(f"machine: {machine()}", flush=True)
    mm = matmul_gflops(dtype)
    print(f"matmul 2048^3 {args.dtype}: {mm:.0f} GFLOP/s (same run); shape {asdict(SHAPE)}", flush=True)
    rows = []
    print(fmt_table([]), flush=True)
    for kind, lengths in plan.items():
        for length in lengths:
            reps = max(args.reps, 5) if kind == "decode" else (1 if args.quick or kind == "prefill"
                                                               else args.reps)
            rows.append(run_case(SHAPE, kind, length, dtype, reps, warmup=kind == "decode"))
            print(fmt_table(rows[-1:]).splitlines()[-1], flush=True)
    print()
    print(fmt_table(rows))
    for r in rows:
        if "matmul_ms" in r:
            print(f"decode {r['L'] // 1024}K: plain matmul MQA {r['matmul_ms']:.2f} ms "
                  f"(dense/sparse against it {r['speedup_vs_matmul']:.2f}x)")
    print(f"machine after: {machine()}")
    return dict(mode="cpu", machine=machine(), kernels=native.describe(), dtype=args.dtype,
                threads=torch.get_num_threads(), shape=asdict(SHAPE), chunk=CHUNK, matmul_gflops=mm,
                rows=rows)


def gpu_main(args) -> dict:
    """Triton kernels (fused indexer + device top-k, head-blocked latent attention) vs SDPA."""
    import statistics

    from dsparity.kernels import dispatch

    dispatch.configure(mode="triton")
    dev, dtype, sync = "cuda", torch.bfloat16, torch.cuda.synchronize
    sh = SHAPE if not args.full_heads else MLAShape(heads=128, index_heads=64)
    grid = [int(v) for v in (args.prefill or "16384,65536").split(",") if v]
    dgrid = [int(v) for v in (args.decode or "16384,65536,131072").split(",") if v]
    print(f"device: {torch.cuda.get_device_name()}, torch {torch.__version__}; shape {asdict(sh)}",
          flush=True)

    def timed(fn, reps=args.reps + 2):
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
        return statistics.median(ts)

    rows = []
    for kind, lengths in (("decode", dgrid), ("prefill", grid)):
        for length in lengths:
            s = length if kind == "prefill" else 1
            x = inputs(sh, s, length, dtype, dev)
            dense = {}
            if kind == "decode" or length <= 16384:  # MQA prefill (D = 576): no flash kernel
                dense["mqa"] = _or_oom(timed, lambda x=x: dense_mqa(x, sh))
            if kind == "prefill":
                dense["mha"] = _or_oom(timed, lambda x=x: dense_mha(x, sh))
            dense = {m: v for m, v in dense.items() if v is not None}
            idx = sparse_select(x, sh)
            ti = timed(lambda x=x: sparse_select(x, sh))
            ta = timed(lambda x=x, idx=idx: sparse_attend(x, sh, idx))
            mode = min(dense, key=dense.get)
            row = dict(kind=kind, L=length, dense_mode=mode, dense_ms=dense[mode], sparse_ms=ti + ta,
                       indexer_topk_ms=ti, attn_ms=ta, speedup=dense[mode] / (ti + ta),
                       **{f"{m}_ms": v for m, v in dense.items()})
            rows.append(row)
            print(f"{kind:8s} L={length:7d} dense({mode}) {dense[mode]:9.3f} ms  sparse {ti + ta:9.3f} ms "
                  f"(idx+topk {ti:8.3f}, attn {ta:8.3f})  dense/sparse {row['speedup']:5.2f}x", flush=True)
            del x, idx
            torch.cuda.empty_cache()
    return dict(mode="gpu", device=torch.cuda.get_device_name(), shape=asdict(sh), rows=rows)


def _or_oom(timed, fn):
    """A dense variant that does not fit the GPU is reported missing, not fatal."""
    try:
        return timed(fn)
    except torch.cuda.OutOfMemoryError:
        torch.cuda.empty_cache()
        print("  (a dense variant ran out of memory: skipped)", flush=True)
        return None


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="a few minutes: decode 16K-64K, chunks 16K, 64K")
    p.add_argument("--json", action="store_true", help="end the output with one JSON object")
    p.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1: quiet and fair)")
    p.add_argument("--reps", type=int, default=3, help="timed repeats per measurement (median)")
    p.add_argument("--prefill", help="comma-separated full-prefill lengths (empty: none)")
    p.add_argument("--chunk", help=f"comma-separated context lengths for a {CHUNK}-token prefill chunk")
    p.add_argument("--decode", help="comma-separated decode lengths (empty: none)")
    p.add_argument("--gpu", action="store_true", help="CUDA: Triton kernels vs SDPA, bf16")
    p.add_argument("--full-heads", action="store_true", help="with --gpu: V3.2-Exp's 128 / 64 heads")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    result = gpu_main(args) if args.gpu else cpu_main(args)
    if args.json:
        print(json.dumps(result, default=float))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
