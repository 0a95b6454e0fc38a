"""dsparity's backends as lm-eval models, and lm-eval's CLI with them registered."""
