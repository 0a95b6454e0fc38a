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


def lcb_docs(dataset):
    """LiveCodeBench: keep stdin/stdout problems, with their public tests as `tests`."""
    import json

    def one(doc):
        cases = json.loads(doc["public_test_cases"] or "[]")
        return {"tests": [{"stdin": c["input"], "stdout": c["output"]} for c in cases
                          if c.get("testtype") == "stdin"]}

    dataset = dataset.map(one)
    return dataset.filter(lambda d: len(d["tests"]) > 0)


_IFEVAL_MAP = {
    "punctuation:no_comma": lambda kw: {"type": "no_commas"},
    "language:response_language": lambda kw: {"type": "language", "value": kw["language"]},
    "startend:end_checker": lambda kw: {"type": "ends_with", "value": kw["end_phrase"]},
    "detectable_format:multiple_sections": lambda kw: {
        "type": "sections",
        "headings": [f"{kw['section_spliter']} {i}" for i in range(1, kw["num_sections"] + 1)]},
    "length_constraints:number_words": lambda kw: (
        {"type": "min_words", "value": kw["num_words"]} if kw["relation"] == "at least"
        else {"type": "max_words", "value": kw["num_words"] - 1}),
    "keywords:frequency": lambda kw: (
        {"type": "keyword_count", "keyword": kw["keyword"], "min": kw["frequency"]}
        if kw["relation"] == "at least" else
        {"type": "keyword_count", "keyword": kw["keyword"], "max": kw["frequency"] - 1}),
}


def ifeval_docs(dataset):
    """IFEval: map the instructions dsparity's writing grader checks; list the others.

    Constraints differ in shape, so they travel as JSON text and are decoded per row (an Arrow
    struct would give every constraint every key, set to None)."""
    import json

    from _dsparity_data import _JsonFields

    def one(doc):
        constraints, unsupported = [], []
        for inst, kwargs in zip(doc["instruction_id_list"], doc["kwargs"], strict=True):
            kw = {k: v for k, v in (kwargs or {}).items() if v is not None}
            made = _IFEVAL_MAP[inst](kw) if inst in _IFEVAL_MAP else None
            if made:
                constraints.append(made)
            else:
                unsupported.append(inst)
        return {"constraints": json.dumps(constraints), "unsupported": unsupported}

    return _JsonFields(dataset.map(one), ["constraints"])
