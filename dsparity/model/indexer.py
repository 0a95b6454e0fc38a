"""The lightning indexer: a small multi-head ReLU scorer that picks which keys each query reads.

DeepSeek-V3.2-Exp, dsa.md §3 ([MOD Indexer]):
    q^I[t, j] = W^IQ_j  c^Q_t            (H_I heads x d_I; c^Q = query latent, else the attention input)
    k^I[s]    = LayerNorm(W^IK x_s)      (one key per token, shared by all heads; LN with bias)
    w[t, j]   = (W^W x_t)_j              (no activation: a head may vote a key down)
    RoPE (NeoX half-split) on the first `rotary_dim` dims of q^I and k^I, the rest unrotated;
    with `rope_head_dim` set, each block of that many rotated dims is rotated as its own head
    (an indexer built from several KV groups of a Llama model, `indexer_init.py`).
    I(t, s)   = (H_I d_I)^-1/2 * sum_j w[t, j] * ReLU(q^I[t, j] . k^I[s])   (kernels.indexer_scores)

The module always computes in float32 (it is small, and selection must not depend on whether the
backbone runs in bf16); it returns projections, never scores, so the scoring kernel stays swappable.
"""

from __future__ import annotations

import torch
from torch import nn

from dsparity.model.config import DSAConfig
from dsparity.model.fp8 import deployed_format


def rope_inv_freq(rotary_dim: int, theta: float) -> torch.Tensor:
    """[rotary_dim / 2] inverse frequencies theta^(-2i/r) (Su et al. RoFormer; same table as MLA's)."""
    return 1.0 / (theta ** (torch.arange(0, rotary_dim, 2, dtype=torch.float64) / rotary_dim))


def apply_rope(x: torch.Tensor, positions: torch.Tensor, inv_freq: torch.Tensor,
               layout: str = "neox", rotary_dim: int | None = None) -> torch.Tensor:
    """Rotate the first `rotary_dim` dims of x [B, S, ..., d] at `positions` [B, S], in blocks of
    c = 2*len(inv_freq) dims each rotated alike (one block, c = rotary_dim, unless set wider).

    neox: pairs (i, i + c/2) - the half-split layout DeepSeek's Nov-2025 fix mandates for the
    indexer (dsa.md §3.2). interleaved: pairs (2i, 2i + 1), the original demo's (buggy) layout.
    """
    c = 2 * inv_freq.numel()
    r = c if rotary_dim is None else rotary_dim
    if r == 0:
        return x
    angles = positions.to(torch.float64).unsqueeze(-1) * inv_freq.to(x.device)  # [B, S, c/2]
    while angles.dim() < x.dim() + (r > c):  # broadcast over head (and block) dims
        angles = angles.unsqueeze(-2)
    cos, sin = angles.cos().to(x.dtype), angles.sin().to(x.dtype)
    rot, rest = x[..., :r], x[..., r:]
    if r > c:  # [..., r] -> [..., r / c, c]: every block is one head's rotary dims
        rot = rot.unflatten(-1, (r // c, c))
    if layout == "neox":
        x1, x2 = rot[..., : c // 2], rot[..., c // 2 :]
        rot = torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)
    else:
        x1, x2 = rot[..., 0::2], rot[..., 1::2]
        rot = torch.stack([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1).flatten(-2)
    return torch.cat([rot.flatten(-2) if r > c else rot, rest], dim=-1)


class LightningIndexer(nn.Module):
    """Per-layer indexer projections (DeepSeek names: wq_b, wk, k_norm, weights_proj)."""

    def __init__(self, hidden_size: int, config: DSAConfig, rope_theta: float,
                 q_input_size: int | None = None):
        super().__init__()
        h, d = config.index_n_heads, config.index_head_dim
        self.n_heads, self.head_dim = h, d
        self.rope_layout = config.rope_layout
        self.fp8, self.hadamard = config.index_fp8, config.index_hadamard
        self.wq = nn.Linear(q_input_size or hidden_size, h * d, bias=False)
        self.wk = nn.Linear(hidden_size, d, bias=False)
        self.k_norm = nn.LayerNorm(d, eps=1e-6)  # LayerNorm with bias, eps 1e-6 [MOD]
        self.weights_proj = nn.Linear(hidden_size, h, bias=False)
        self.rotary_dim = config.rotary_dim
        self.register_buffer("inv_freq", rope_inv_freq(config.rope_block, rope_theta).float(),
                             persistent=False)

    def keys(self, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """x [B, S, hidden] -> rotated keys [B, S, d_I] (what the indexer key cache stores)."""
        k = self.k_norm(self.wk(x.to(self.wk.weight.dtype)))
        k = apply_rope(k, positions, self.inv_freq.double(), self.rope_layout, self.rotary_dim)
        return deployed_format(k, fp8=self.fp8, rotate=self.hadamard)

    def queries(self, x: torch.Tensor, positions: torch.Tensor,
                q_input: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """-> (q [B, S, H_I, d_I] rotated, w [B, S, H_I]). q_input: query latent if any."""
        b, s, _ = x.shape
        src = x if q_input is None else q_input
        q = self.wq(src.to(self.wq.weight.dtype)).view(b, s, self.n_heads, self.head_dim)
        q = apply_rope(q, positions, self.inv_freq.double(), self.rope_layout, self.rotary_dim)
        q = deployed_format(q, fp8=self.fp8, rotate=self.hadamard)
        w = self.weights_proj(x.to(self.weights_proj.weight.dtype))
        return q, w
