import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from _dsparity_data import load_jsonl_splits  # noqa: E402


def load(data_file: str, **_):
    return load_jsonl_splits(Path(__file__).resolve().parent, data_file)
