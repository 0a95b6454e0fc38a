"""dsparity backends driven by lm-eval itself: the registered models and the wrapper CLI."""

import json
import subprocess
import sys

import pytest
from loopback import ServerThread, scripted_app

from dsparity.evals.tasks import BUILTIN_TASKS


def test_lm_eval_cli_runs_a_task_through_dsparity_openai(tmp_path):
    with ServerThread(scripted_app()) as server:
        out = tmp_path / "out"
        cmd = [sys.executable, "-m", "dsparity.evals.harness.lm_eval_cli", "run",
               "--model", "dsparity-openai",
               "--model_args", f"model=scripted,base_url={server.base_url},concurrency=4",
               "--tasks", "smoke_arithmetic", "--include_path", str(BUILTIN_TASKS),
               "--apply_chat_template", "--output_path", str(out), "--log_samples", "--limit", "5"]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    results = json.loads(next(out.rglob("results_*.json")).read_text())
    # The scripted model answers every arithmetic item right; lm-eval's own metric agrees.
    assert results["results"]["smoke_arithmetic"]["exact_match,none"] == 1.0
    assert sum(server.server.config.app.state.requests.values()) == 5


@pytest.mark.parametrize("given, expect, note", [
    ("cpu", "cpu", None), ("auto", "auto", None), ("CPU", "cpu", None),
    ("cuda:99", "cpu", "torch sees"), ("mps", "cpu", "is not one dsparity runs on"),
])
def test_lm_eval_device_strings_map_to_what_exists(given, expect, note, capsys):
    from dsparity.evals.harness.lm_eval_models import local_device

    assert local_device(given) == expect
    err = capsys.readouterr().err
    assert (note in err) if note else not err


def test_model_args_device_wins_over_lm_evals_device(tiny_model_dir):
    from dsparity.evals.harness.lm_eval_models import DsparityLocalLM

    lm = DsparityLocalLM.create_from_arg_string(f"model={tiny_model_dir},device=cpu",
                                                {"device": "cuda:0", "batch_size": 1})
    assert lm.spec.opt("device") == "cpu"
