"""Backends behind one async contract; `make_backend(spec)` picks by the spec's kind."""

from dsparity.evals.backends.base import Backend, Completion, Request, Usage, identity_key
from dsparity.evals.specs import ModelSpec


def make_backend(spec: ModelSpec) -> Backend:
    if spec.kind == "local":
        from dsparity.evals.backends.local import LocalBackend

        return LocalBackend(spec)
    from dsparity.evals.backends.openai_api import OpenAIBackend

    return OpenAIBackend(spec)


__all__ = ["Backend", "Completion", "Request", "Usage", "identity_key", "make_backend"]
