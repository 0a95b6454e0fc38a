import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from _dsparity_data import load_any  # noqa: E402


def load(**kwargs):
    return load_any(Path(__file__).resolve().parent, **kwargs)
