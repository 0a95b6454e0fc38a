"""Tiny random transformers models with a byte-level tokenizer, built in code for fast tests."""

from __future__ import annotations

from pathlib import Path

CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
SPECIALS = ["<|im_start|>", "<|im_end|>", "<|endoftext|>"]


def byte_tokenizer():
    """A 259-token byte-level BPE tokenizer (256 bytes + 3 specials) with a ChatML template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {ch: i for i, ch in enumerate(sorted(alphabet))}
    for s in SPECIALS:
        vocab[s] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(SPECIALS)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=None, eos_token="<|im_end|>", pad_token="<|endoftext|>")
    fast.chat_template = CHAT_TEMPLATE
    return fast


def tiny_config(arch: str = "llama", **overrides):
    """Hidden 64, 2 layers, 4 heads, 2 KV heads, head_dim 16, vocab 259."""
    import transformers

    cls = {"llama": transformers.LlamaConfig, "qwen3": transformers.Qwen3Config,
           "qwen2": transformers.Qwen2Config, "mistral": transformers.MistralConfig}[arch]
    kw = dict(vocab_size=259, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
              num_attention_heads=4, num_key_value_heads=2, head_dim=16,
              max_position_embeddings=16384, eos_token_id=257, pad_token_id=258, bos_token_id=None,
              tie_word_embeddings=False)
    kw.update(overrides)
    return cls(**kw)


def tiny_model(arch: str = "llama", seed: int = 0, **overrides):
    import torch
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny_config(arch, **overrides), dtype=torch.float32)
    return model.eval()


def save_tiny(folder: Path, arch: str = "llama", seed: int = 0) -> Path:
    """Write a tiny model + tokenizer folder that `local:FOLDER` loads."""
    model = tiny_model(arch, seed)
    model.generation_config.eos_token_id = 257
    model.generation_config.pad_token_id = 258
    model.save_pretrained(folder)
    byte_tokenizer().save_pretrained(folder)
    return folder


def cache_kwargs(cache) -> dict:
    """Forward kwargs that hand `cache` over under this transformers' name for it: `cache` in late
    5.x releases, `past_key_values` in early ones (where `cache=` would be silently ignored)."""
    import inspect

    from transformers.models.llama.modeling_llama import LlamaModel

    takes_cache = "cache" in inspect.signature(LlamaModel.forward).parameters
    return {"cache" if takes_cache else "past_key_values": cache, "use_cache": True}


def has_deepseek_v32() -> bool:
    """transformers >= the release that added DeepseekV32 (5.0 has only DeepseekV3)."""
    try:
        from transformers import DeepseekV32ForCausalLM  # noqa: F401
    except ImportError:
        return False
    return True


def assert_decode_selects_like_full_forward(model, prompt, steps: int) -> None:
    """Greedy decoding with a KV cache picks, at every step and layer, the same index set for the
    new token as a full forward over the sequence so far, and so the same tokens."""
    import torch

    model.dsa_runtime.recorded = {}
    out = model.generate(prompt, max_new_tokens=steps, min_new_tokens=steps, do_sample=False)
    decoded = model.dsa_runtime.recorded
    assert decoded[0][1].shape[:2] == (1, 1)  # decode steps ran the sparse path on the cache
    seq = prompt
    for step in range(steps):
        model.dsa_runtime.recorded = {}
        with torch.no_grad():
            logits = model(seq, use_cache=False).logits
        for layer, picked in decoded.items():
            full = model.dsa_runtime.recorded[layer][0][:, -1]
            assert torch.equal(full, picked[step][:, -1]), (layer, step)
        seq = torch.cat([seq, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    assert torch.equal(seq, out)


YARN = {"rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0,
        "original_max_position_embeddings": 1024, "beta_fast": 32.0, "beta_slow": 1.0,
        "mscale": 1.0, "mscale_all_dim": 0.8}  # mscale != mscale_all_dim: cos/sin scaled too


def tiny_deepseek_v3_config(**overrides):
    """DeepseekV3 (MLA + MoE) at test size: hidden 64, 2 layers (1 dense MLP, 1 MoE), 4 heads,
    q-LoRA 48, KV latent 32, rope 8 + nope 16 per head, v 16, vocab 259."""
    from transformers import DeepseekV3Config

    kw = dict(vocab_size=259, hidden_size=64, intermediate_size=128, moe_intermediate_size=32,
              num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4, n_routed_experts=4,
              n_shared_experts=1, kv_lora_rank=32, q_lora_rank=48, qk_rope_head_dim=8,
              v_head_dim=16, qk_nope_head_dim=16, n_group=1, topk_group=1, num_experts_per_tok=2,
              first_k_dense_replace=1, max_position_embeddings=4096, initializer_range=0.1,
              pad_token_id=258, bos_token_id=None, eos_token_id=257, tie_word_embeddings=False)
    kw.update(overrides)
    return DeepseekV3Config(**kw)


def tiny_deepseek_v3(seed: int = 0, dtype=None, **overrides):
    """A random tiny DeepseekV3ForCausalLM (eager experts: the grouped kernel has no float64)."""
    import torch
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny_deepseek_v3_config(**overrides),
                                             experts_implementation="eager")
    model.generation_config.eos_token_id = None  # greedy tests run their full length
    return model.to(dtype or torch.float32).eval()


def save_tiny_deepseek_v3(folder: Path, seed: int = 0, **overrides) -> Path:
    """A tiny DeepseekV3 model folder with the byte tokenizer (what `dsparity convert` reads)."""
    model = tiny_deepseek_v3(seed, **overrides)
    model.save_pretrained(folder)
    byte_tokenizer().save_pretrained(folder)
    return folder
