"""Serving: `dsparity serve` (an OpenAI-compatible server for a local model) and the served
default baseline that `dsparity compare` starts on loopback."""
