"""Price tables: what a sample cost, from its token usage.

Prices are per million tokens, split as DeepSeek bills them: input on a cache hit, input on a
cache miss, and output. They change, so every row carries the date it was published; override
or extend the table with a YAML file (`--prices FILE`) of the same shape:

    my-model: {input_cache_hit: 0.1, input_cache_miss: 1.0, output: 2.0, currency: USD,
               as_of: 2026-01-01, source: "provider pricing page"}
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import yaml

from dsparity.errors import DsparityError
from dsparity.evals.backends.base import Usage


@dataclass(frozen=True)
class Price:
    input_cache_hit: float  # per million tokens
    input_cache_miss: float
    output: float
    currency: str
    as_of: str
    source: str = ""

    def cost(self, usage: Usage) -> float:
        """Cost of one request. Prompt tokens not reported as hits are billed as misses."""
        hit = usage.cache_hit_tokens
        miss = usage.cache_miss_tokens or max(0, usage.prompt_tokens - hit)
        # Reasoning tokens are part of completion_tokens in DeepSeek's and OpenAI's usage.
        return (hit * self.input_cache_hit + miss * self.input_cache_miss
                + usage.completion_tokens * self.output) / 1e6

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


_DEEPSEEK_NEWS = "DeepSeek API pricing at the V3.2-Exp release (2025-09-29)"
# Published per-million-token prices (input cache hit / cache miss / output) in CNY; the USD rows
# are the approximate conversions DeepSeek's English pricing page quoted for the same prices.
BUILTIN_PRICES: dict[str, Price] = {
    "deepseek-v3.1-terminus": Price(0.07, 0.56, 1.68, "USD", "2025-09-29", _DEEPSEEK_NEWS),
    "deepseek-v3.1-terminus-cny": Price(0.5, 4.0, 12.0, "CNY", "2025-09-29", _DEEPSEEK_NEWS),
    "deepseek-v3.2-exp": Price(0.028, 0.28, 0.42, "USD", "2025-09-29", _DEEPSEEK_NEWS),
    "deepseek-v3.2-exp-cny": Price(0.2, 2.0, 3.0, "CNY", "2025-09-29", _DEEPSEEK_NEWS),
}
# Which price row a model name gets when the spec does not say `price=`: the names DeepSeek's
# API serves map to the model behind them at the table's date.
MODEL_PRICE_ALIASES = {
    "deepseek-chat": "deepseek-v3.2-exp",
    "deepseek-reasoner": "deepseek-v3.2-exp",
    "deepseek-ai/DeepSeek-V3.2-Exp": "deepseek-v3.2-exp",
    "deepseek-ai/DeepSeek-V3.1-Terminus": "deepseek-v3.1-terminus",
}


def load_prices(path: Path | None) -> dict[str, Price]:
    table = dict(BUILTIN_PRICES)
    if path is None:
        return table
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as exc:
        mark = getattr(exc, "problem_mark", None)
        why = f"not valid YAML at line {mark.line + 1}" if mark else str(exc).splitlines()[0]
        raise DsparityError(str(path), "", f"cannot read the price table ({why})",
                            "give a YAML file of NAME: {input_cache_hit, input_cache_miss, output, "
                            "currency, as_of}") from None
    if not isinstance(raw, dict):
        raise DsparityError(str(path), "", "must map price names to prices", "see `dsparity --help`")
    for name, row in raw.items():
        try:
            table[str(name)] = Price(**{k: (str(v) if k in ("as_of", "currency", "source") else v)
                                        for k, v in row.items()})
        except TypeError as exc:
            raise DsparityError(str(path), str(name), f"bad price row ({exc})",
                                "use keys input_cache_hit, input_cache_miss, output, currency, as_of, "
                                "source") from None
    return table


def price_for(model: str, explicit: str | None, table: dict[str, Price]) -> tuple[str, Price] | None:
    """The price row for a model: `price=NAME` in its spec, else an alias, else none (free)."""
    name = explicit or MODEL_PRICE_ALIASES.get(model) or (model if model in table else None)
    if name is None:
        return None
    if name not in table:
        raise DsparityError("price", name, "no such price row",
                            f"use one of: {', '.join(sorted(table))}, or add it with --prices FILE")
    return name, table[name]
