"""Model specs, task loading through lm-eval, and answer graders."""


import pytest

from dsparity.errors import DsparityError
from dsparity.evals.graders import GradeInput, get_grader
from dsparity.evals.specs import parse_spec
from dsparity.evals.tasks import BUILTIN_TASKS, load_tasks, scan


def test_specs_parse_local_and_openai():
    s = parse_spec("local:smollm2-135m-instruct?attention=dsa&topk=256&dtype=bfloat16")
    assert (s.kind, s.name, s.options) == ("local", "smollm2-135m-instruct",
                                           {"attention": "dsa", "topk": 256, "dtype": "bfloat16"})
    o = parse_spec("openai:deepseek-chat@https://api.deepseek.com?api_key_env=DEEPSEEK_API_KEY")
    assert (o.kind, o.name, o.base_url) == ("openai", "deepseek-chat", "https://api.deepseek.com")


@pytest.mark.parametrize("text, words", [
    ("smollm2", "must start with `local:` or `openai:`"),
    ("local:", "no model"),
    ("local:x?topk=abc", "not a positive integer"),
    ("local:x?attention=sparse", "not allowed"),
    ("local:x?colour=red", "unknown option"),
    ("openai:deepseek-chat", "MODEL@BASE_URL"),
    ("openai:m@ftp://host", "not an http(s) URL"),
])
def test_bad_specs_name_the_problem_and_the_fix(text, words):
    with pytest.raises(DsparityError) as err:
        parse_spec(text, source="--model")
    line = err.value.line()
    assert words in line and "--model" in line and "fix:" in line and "\n" not in line


def test_smoke_suite_loads_through_lm_eval():
    tasks = load_tasks(suites=["smoke"], limit=2)
    names = [t.name for t in tasks]
    assert names == ["smoke_arithmetic", "smoke_needle"]
    arith = tasks[0]
    assert arith.n_docs >= 8 and len(arith.items) == 2
    item = arith.items[0]
    assert item.target.isdigit() and item.request.messages[0][0] == "user"
    assert "Answer with the number only." in item.request.messages[0][1]
    assert item.request.stop == ("\n\n",) and item.request.temperature == 0.0
    needle = tasks[1].items[0]
    assert len(needle.request.messages[0][1]) > 5000  # well beyond a 256-token top-k
    # Hashes are stable across loads: pairing relies on them.
    again = load_tasks(names=["smoke_arithmetic"], limit=2)[0]
    assert [i.doc_hash for i in again.items] == [i.doc_hash for i in arith.items]
    assert again.task_hash == arith.task_hash


def test_every_builtin_yaml_is_a_valid_lm_eval_task():
    from lm_eval.tasks import TaskManager

    tm = TaskManager(include_path=str(BUILTIN_TASKS), include_defaults=False)
    specs, problems = scan([BUILTIN_TASKS])
    assert not problems
    assert set(specs) <= set(tm.all_tasks)


@pytest.mark.parametrize("text, target, score", [
    ("53", "53", 1.0), ("The answer is **53**.", "53", 1.0), ("1,200", "1200", 1.0),
    ("54", "53", 0.0), ("53 or 54? 54", "53", 0.0), ("", "53", 0.0), ("５３", "53", 1.0),
])
def test_exact_grader(text, target, score):
    grade = get_grader("exact")(GradeInput(text, target, {}), {"primary": "flexible"})
    assert grade.score == score


def test_exact_grader_keeps_strict_and_flexible_apart():
    grade = get_grader("exact")(GradeInput("The answer is 53.", "53", {}), {"primary": "strict"})
    assert grade.score == 0.0 and grade.details["flexible"] and not grade.details["strict"]


def test_needle_grader_requires_every_value():
    needle = get_grader("needle")
    assert needle(GradeInput("It is 439563.", "439563", {}), {}).score == 1.0
    assert needle(GradeInput("It is 43956.", "439563", {}), {}).score == 0.0
    assert needle(GradeInput("12 and 34", "12 | 34 | 56", {}), {}).score == pytest.approx(2 / 3)
