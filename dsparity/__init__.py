"""dsparity: evidence for (or against) parity of a sparse-attention model with its dense baseline."""

__version__ = "0.1.0"
