"""DSAConfig: the knobs of DeepSeek Sparse Attention on a converted model.

Defaults follow the small-scale reproduction table (dsa.md §8.1) and the calibration run on the
embedded default model (stack.md, "DSA indexer warm-up"): 4 indexer heads of dim 64 with the
first half rotated (NeoX layout), k = 256 at L = 2048 (k/L = 1/8).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, fields
from typing import Literal

RopeLayout = Literal["neox", "interleaved"]
RopeFreqs = Literal["theta", "model"]


@dataclass(frozen=True)
class DSAConfig:
    # V3.2-Exp uses 2048 of 128K; 256 keeps k/L = 1/8 at the 2K lengths we can afford on CPU.
    index_topk: int = 256
    # H_I: V3.2-Exp 64 (half its 128 heads); 4 was as good as 8 in the calibration at 0.6x cost.
    index_n_heads: int = 4
    # d_I: V3.2-Exp 128; 64 matches SmolLM2's head_dim.
    index_head_dim: int = 64
    # Rotated dims, taken from the *front* of d_I ([rope | nope], dsa.md §3.2). None = d_I / 2.
    rope_dim: int | None = None
    # Rotate the rotated dims in blocks of this many, each as its own head (None = one block, as
    # DeepSeek's). A Llama conversion whose indexer spans several KV groups (d_I = m * head_dim,
    # `indexer_init.py`) rotates each group's block as the model rotates that group's heads.
    rope_head_dim: int | None = None
    # NeoX half-split pairing (i, i + r/2) is DeepSeek's Nov-2025 fix; "interleaved" is the
    # original buggy demo layout, kept only for ablations (dsa.md §3.2, §8.2.1).
    rope_layout: RopeLayout = "neox"
    # None = the base model's rope_theta, so the indexer sees positions like the model does.
    rope_theta: float | None = None
    # Which frequency table rotates the indexer: "theta" = theta^(-2i/r) over the rotated dims;
    # "model" = the model's own rotary table, rope scaling included (MLA's YaRN-scaled table on
    # qk_rope_head_dim dims, as DeepSeek's indexer and transformers' DeepseekV32 use, dsa.md §3.2).
    # None = the family's default: "theta" for Llama-family conversions, "model" for MLA.
    rope_freqs: RopeFreqs | None = None
    # The deployed indexer's number formats (dsa.md §3.3-3.4): FP8 e4m3 q/k with per-128 ue8m0
    # scales, and the Walsh-Hadamard rotation applied before it. Off = fp32 (algorithmic fidelity).
    index_fp8: bool = False
    index_hadamard: bool = False
    # When every row has <= k candidates DSA is exactly dense attention (dsa.md §3.6); taking the
    # dense kernel then is an optimisation only. Tests switch it off to exercise the sparse path.
    dense_when_short: bool = True

    def __post_init__(self) -> None:
        if self.index_topk < 1:
            raise ValueError(f"DSAConfig.index_topk must be >= 1, got {self.index_topk}")
        if self.index_n_heads < 1 or self.index_head_dim < 2:
            raise ValueError("DSAConfig: index_n_heads must be >= 1 and index_head_dim >= 2")
        r = self.rotary_dim
        if r % 2 or not 0 <= r <= self.index_head_dim:
            raise ValueError(f"DSAConfig.rope_dim must be even and <= index_head_dim, got {r}")
        b = self.rope_head_dim
        if b is not None and (b < 2 or b % 2 or r % b):
            raise ValueError(f"DSAConfig.rope_head_dim must be even and divide the rotated dims "
                             f"({r}), got {self.rope_head_dim}")
        if self.rope_layout not in ("neox", "interleaved"):
            raise ValueError(f"DSAConfig.rope_layout must be 'neox' or 'interleaved', "
                             f"got {self.rope_layout!r}")
        if self.rope_freqs not in (None, "theta", "model"):
            raise ValueError(f"DSAConfig.rope_freqs must be 'theta' or 'model', got {self.rope_freqs!r}")
        d = self.index_head_dim
        if self.index_hadamard and d & (d - 1):
            raise ValueError(f"DSAConfig.index_hadamard needs a power-of-two index_head_dim, got {d}")

    @property
    def rotary_dim(self) -> int:
        return self.index_head_dim // 2 if self.rope_dim is None else self.rope_dim

    @property
    def rope_block(self) -> int:
        """Dims per independently rotated block (the rotary table's width)."""
        return self.rope_head_dim or self.rotary_dim

    def indexer_fields(self) -> dict:
        """What shapes the indexer weights (topk and runtime switches do not)."""
        fields = {"index_n_heads": self.index_n_heads, "index_head_dim": self.index_head_dim,
                  "rope_dim": self.rotary_dim, "rope_layout": self.rope_layout,
                  "rope_theta": self.rope_theta}
        if self.rope_freqs is not None:  # only when set: existing cache keys stay as they were
            fields["rope_freqs"] = self.rope_freqs
        if self.rope_head_dim is not None:
            fields["rope_head_dim"] = self.rope_head_dim
        return fields

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> DSAConfig:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    def key(self) -> str:
        """Short stable hash of the weight-shaping fields (for cache file names)."""
        blob = json.dumps(self.indexer_fields(), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:12]
