import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from _dsparity_data import load_any  # noqa: E402


def load(**kwargs):
    return load_any(Path(__file__).resolve().parent, **kwargs)


# -- hub suites: turn the public datasets' rows into what dsparity's graders read -----------------

def gpqa_docs(dataset):
    """GPQA: shuffle the four options per question with a fixed seed (as simple-evals does)."""
    import random

    def one(doc):
        options = [doc["Correct Answer"], doc["Incorrect Answer 1"], doc["Incorrect Answer 2"],
                   doc["Incorrect Answer 3"]]
        order = list(range(4))
        random.Random(f"gpqa:{doc['Question']}").shuffle(order)
        shuffled = [options[i].strip() for i in order]
        return {"question": doc["Question"].strip(), "choices": shuffled,
                "answer": "ABCD"[order.index(0)]}

    return dataset.map(one, remove_columns=dataset.column_names)


LCB_REPO = "livecodebench/code_generation_lite"
LCB_FIELDS = ("question_title", "question_content", "platform", "question_id", "contest_id",
              "contest_date", "starter_code", "difficulty", "public_test_cases", "metadata")


def lcb_load(release_file="test6.jsonl", **kwargs):
    """LiveCodeBench's release file from the hub's file cache (or the hub).

    The repository is a loading script, which datasets 4+ no longer runs, so the JSONL file is
    read directly; `hf_hub_download` finds it in the hub cache offline (HF_HUB_OFFLINE=1), which
    `load_dataset("json", data_files="hf://...")` cannot (it lists the repository first). The
    private tests (large, base64 pickles) are not kept."""
    import json

    import datasets
    from huggingface_hub import hf_hub_download

    path = hf_hub_download(LCB_REPO, release_file, repo_type="dataset")
    rows = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                row = json.loads(line)
                rows.append({k: row.get(k) for k in LCB_FIELDS})
    return {"test": datasets.Dataset.from_list(rows)}


def lcb_docs(dataset):
    """LiveCodeBench: keep stdin/stdout problems, with their public tests as `tests`."""
    import json

    def one(doc):
        cases = json.loads(doc["public_test_cases"] or "[]")
        return {"tests": [{"stdin": c["input"], "stdout": c["output"]} for c in cases
                          if c.get("testtype") == "stdin"]}

    dataset = dataset.map(one)
    return dataset.filter(lambda d: len(d["tests"]) > 0)
