"""DeepSeek Sparse Attention (DSA) for transformers models: convert, warm up, run.

Public API:
    prepare_dsa(model, tokenizer, *, base_revision, topk=256, cache_dir=None, progress=True)
    convert_to_dsa(model, config=None, *, seed=0)   # Llama family; DeepseekV3 (MLA) via mla.py
    set_dsa(model, *, enabled=None, topk=None) -> DSAConfig
    remove_dsa(model)
    use_dsparity_attention(model)      # DeepseekV32ForCausalLM through dsparity's kernels
    DSAConfig, WarmupConfig, warm_up, save_indexers, load_indexers

A converted DeepseekV3 is written as a transformers DeepseekV32 checkpoint by
`dsparity.model.export.export_v32` (the `dsparity convert` command).
"""

from dsparity.model.checkpoint import load_indexers, save_indexers
from dsparity.model.config import DSAConfig
from dsparity.model.convert import convert_to_dsa, remove_dsa, set_dsa, use_dsparity_attention
from dsparity.model.prepare import prepare_dsa
from dsparity.model.warmup import WarmupConfig, WarmupReport, warm_up

__all__ = ["DSAConfig", "WarmupConfig", "WarmupReport", "convert_to_dsa", "load_indexers",
           "prepare_dsa", "remove_dsa", "save_indexers", "set_dsa", "use_dsparity_attention",
           "warm_up"]
