"""The deployed indexer's number formats, simulated: Walsh-Hadamard rotation and FP8 (e4m3) q/k.

DeepSeek-V3.2-Exp's inference code (dsa.md §3.3-3.5, [MOD Indexer.forward], [KER act_quant]):
after RoPE, q^I and k^I are rotated by the normalised Hadamard matrix H/sqrt(d) (orthogonal, so
q.k is unchanged in exact arithmetic; it spreads outlier channels before quantisation), then
quantised per block of 128 values: a = max(|v|) clamped to >= 1e-4, scale = a / 448 rounded *up*
to a power of two ("ue8m0", the 671B config's scale_fmt), v8 = e4m3(clamp(v / scale, +-448)).
The score kernel then computes sum_j w_j ReLU(q8_j . k8) with the scales folded back in, which
equals the indexer score on the dequantised values (all scales are positive, dsa.md §3.5).

Here both steps run on the indexer's own float tensors and come back dequantised (v8 * scale),
so every scoring and top-k kernel runs unchanged and sees exactly the values the FP8 kernel sees.
"""

from __future__ import annotations

import functools

import torch

FP8_MAX = 448.0  # largest finite float8_e4m3fn
BLOCK = 128  # act_quant's block size [MOD block_size = 128]


@functools.lru_cache(maxsize=16)
def _hadamard_matrix(d: int) -> torch.Tensor:
    """Sylvester's H_d / sqrt(d) in float64 (d a power of two)."""
    h = torch.ones(1, 1, dtype=torch.float64)
    while h.shape[0] < d:
        h = torch.cat([torch.cat([h, h], 1), torch.cat([h, -h], 1)], 0)
    return h / d**0.5


def hadamard(x: torch.Tensor) -> torch.Tensor:
    """Normalised Walsh-Hadamard rotation of the last dimension (DeepSeek's `rotate_activation`)."""
    d = x.shape[-1]
    if d & (d - 1):
        raise ValueError(f"the Hadamard rotation needs a power-of-two index_head_dim, got {d}")
    return x @ _hadamard_matrix(d).to(device=x.device, dtype=x.dtype)


def fp8_e4m3(x: torch.Tensor, *, block: int = BLOCK, ue8m0: bool = True) -> torch.Tensor:
    """Quantise to e4m3 per block of `block` values of the last dimension and dequantise.

    Scales as `act_quant`: amax clamped to 1e-4, divided by 448, rounded up to a power of two
    when `ue8m0`. A last dimension shorter than `block` is one block (tiny test models).
    """
    d = x.shape[-1]
    b = min(block, d)
    if d % b:
        raise ValueError(f"FP8 blocks of {b} do not tile the index_head_dim {d}")
    v = x.float().reshape(*x.shape[:-1], d // b, b)
    scale = v.abs().amax(-1, keepdim=True).clamp_min(1e-4) / FP8_MAX
    if ue8m0:
        scale = torch.exp2(torch.ceil(torch.log2(scale)))
    q8 = (v.detach() / scale.detach()).clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn)
    deq = (q8.float() * scale.detach()).reshape(x.shape).to(x.dtype)
    # Straight-through in training (the warm-up may run in FP8): the values are the quantised ones,
    # the gradient that of the identity, since rounding has none.
    return x + (deq - x).detach() if x.requires_grad else deq


def deployed_format(x: torch.Tensor, *, fp8: bool, rotate: bool) -> torch.Tensor:
    """What the deployed indexer scores with: optional Hadamard, then optional FP8 round trip."""
    if rotate:
        x = hadamard(x)
    if fp8:
        x = fp8_e4m3(x)
    return x


def topk_overlap(a: torch.Tensor, b: torch.Tensor) -> float:
    """Share of B's selected keys that A selects too, over all rows: sum_t |A_t & B_t| / sum_t |B_t|.

    a, b: index sets [..., k] of the same rows (-1 = empty slot)."""
    a, b = a.reshape(-1, a.shape[-1]).long(), b.reshape(-1, b.shape[-1]).long()
    width = int(max(int(a.max()), int(b.max()), 0)) + 2  # column 0 collects the -1 slots
    in_a = torch.zeros(a.shape[0], width, dtype=torch.bool).scatter_(1, a + 1, True)
    in_b = torch.zeros(b.shape[0], width, dtype=torch.bool).scatter_(1, b + 1, True)
    total = int(in_b[:, 1:].sum())
    return int((in_a & in_b)[:, 1:].sum()) / total if total else 1.0
