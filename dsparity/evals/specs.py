"""Model specs: one string names a model everywhere (CLI, job files, store).

    local:NAME_OR_PATH[?key=value&...]          e.g. local:smollm2-135m-instruct?attention=dsa&topk=256
    openai:MODEL@BASE_URL[,BASE_URL...][?key=value&...]
                                                e.g. openai:deepseek-chat@https://api.deepseek.com

Keys are validated here, so a typo fails before anything runs.

API keys: an openai endpoint gets the key held by the environment variable its spec names with
`api_key_env=NAME`, and no other. Without `api_key_env` no key is sent (OPENAI_API_KEY goes to
https://api.openai.com only), so a key set for one provider never reaches another endpoint, a
plain-http server or a mistyped host.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from urllib.parse import parse_qsl, urlparse

from dsparity.errors import DsparityError
from dsparity.model.loading import DEFAULT_MODEL

# The mission in miniature: the same weights plus a warmed-up lightning indexer against the dense
# model served over the API. Top-k 32 keeps V3.2-Exp's ratio of k to length (2048 of 16K-64K) at
# the 256-1K tokens two CPU cores can score in minutes (the default suite's lengths: 8-32x k).
DEFAULT_TOPK = 32
DEFAULT_CANDIDATE = f"local:{DEFAULT_MODEL}?attention=dsa&topk={DEFAULT_TOPK}"
SERVED_DEFAULT_LABEL = f"dsparity-serve/{DEFAULT_MODEL}"  # the default baseline, over the API

LOCAL_KEYS = {
    "attention": "dense | dsa | window | block | oracle (sparsity controls at the same top-k budget)",
    "topk": "top-k budget, keys per query token (int; DSA and the controls)",
    "indexers": "attention=dsa: indexer weights `dsparity warmup --out` wrote (a .safetensors "
                "path; default: the cached first-use warm-up)",
    "sink": "attention=window: sink tokens kept at the start (int, default 4)",
    "block_size": "attention=block: keys per block (int, default 64)",
    "dtype": "float32 | bfloat16 | float16",
    "device": "cpu | cuda | auto",
    "threads": "torch CPU threads (int)",
    "max_batch": "requests batched together (int)",
    "label": "name used in reports instead of the spec",
}
OPENAI_KEYS = {
    "api_key_env": "environment variable holding the API key; without it no key is sent (except "
                   "OPENAI_API_KEY to https://api.openai.com)",
    "concurrency": "requests in flight (int)",
    "timeout": "seconds per attempt (float)",
    "retries": "attempts after the first on 429/5xx/network errors (int)",
    "label": "identify the endpoint by this name instead of its URL",
    "revision": "model revision recorded in provenance",
    "stream": "true | false",
    "rpm": "requests per minute at most (float)",
    "tpm": "tokens per minute at most (float)",
    "price": "price row for cost accounting (see dsparity.evals.accounting.pricing)",
}
INT_KEYS = {"topk", "threads", "max_batch", "concurrency", "retries", "sink", "block_size"}
ZERO_OK = {"retries", "sink"}  # int keys where 0 means "none"
FLOAT_KEYS = {"timeout", "rpm", "tpm"}
CHOICES = {
    "attention": {"dense", "dsa", "window", "block", "oracle"},
    "dtype": {"float32", "bfloat16", "float16"},
    "device": {"cpu", "cuda", "auto"},
    "stream": {"true", "false"},
}


@dataclass(frozen=True)
class ModelSpec:
    kind: str  # "local" | "openai"
    name: str  # model name or path (local) / model id (openai)
    base_url: str | None = None
    options: dict[str, str | int | float] = field(default_factory=dict)
    text: str = ""  # the spec as written

    @property
    def label(self) -> str:
        return str(self.options.get("label") or self.text)

    def opt(self, key: str, default=None):
        return self.options.get(key, default)


def parse_spec(text: str, *, source: str = "model spec") -> ModelSpec:
    """Parse and validate a model spec string; raise DsparityError naming the bad part."""
    text = text.strip()
    kind, sep, rest = text.partition(":")
    if not sep or kind not in ("local", "openai"):
        raise DsparityError(source, repr(text), "must start with `local:` or `openai:`",
                            "e.g. local:smollm2-135m-instruct or openai:deepseek-chat@https://api.deepseek.com")
    body, _, query = rest.partition("?")
    options = _parse_options(query, LOCAL_KEYS if kind == "local" else OPENAI_KEYS, source, text)
    if kind == "local":
        if not body:
            raise DsparityError(source, repr(text), "no model after `local:`",
                                "write local:NAME_OR_PATH")
        return ModelSpec("local", body, None, options, text)
    model, at, url = body.rpartition("@")
    if not at or not model or not url:
        raise DsparityError(source, repr(text), "an openai spec needs MODEL@BASE_URL",
                            "e.g. openai:deepseek-chat@https://api.deepseek.com")
    for one in url.split(","):  # several base URLs: replicas of one model
        parsed = urlparse(one.strip())
        if parsed.scheme not in ("http", "https") or not parsed.netloc:
            raise DsparityError(source, repr(text), f"base URL {one!r} is not an http(s) URL",
                                "write the server's base URL, e.g. http://127.0.0.1:8000/v1 "
                                "(several: comma-separated)")
    return ModelSpec("openai", model, url.rstrip("/"), options, text)


def _parse_options(query: str, allowed: dict[str, str], source: str, text: str) -> dict:
    options: dict[str, str | int | float] = {}
    for key, value in parse_qsl(query, keep_blank_values=True, strict_parsing=False):
        if key not in allowed:
            known = ", ".join(sorted(allowed))
            raise DsparityError(source, f"key {key!r} in {text!r}", "unknown option",
                                f"use one of: {known}")
        options[key] = _convert(key, value, source, text)
    if "?" in text and query and not options:
        raise DsparityError(source, repr(text), "could not read the options after `?`",
                            "write key=value pairs joined by &")
    return options


def _convert(key: str, value: str, source: str, text: str):
    where = f"key {key!r} in {text!r}"
    try:
        if key in INT_KEYS:
            number = int(value)
            if number < (0 if key in ZERO_OK else 1):
                raise ValueError
            return number
        if key in FLOAT_KEYS:
            number = float(value)
            if number <= 0:
                raise ValueError
            return number
    except ValueError:
        kind = ("a whole number >= 0" if key in ZERO_OK else "a positive integer") if key in INT_KEYS \
            else "a positive number"
        raise DsparityError(source, where, f"{value!r} is not {kind}",
                            f"write {key}=<{kind}>") from None
    if key in CHOICES and value not in CHOICES[key]:
        raise DsparityError(source, where, f"{value!r} is not allowed",
                            f"use one of: {', '.join(sorted(CHOICES[key]))}")
    return value

