"""`python -m dsparity.evals.harness.lm_eval_cli ...`: lm-eval's own CLI with dsparity's models registered."""

import dsparity.evals.harness.lm_eval_models  # noqa: F401  (registers dsparity-local, dsparity-openai)


def main() -> None:
    from lm_eval.__main__ import cli_evaluate

    cli_evaluate()


if __name__ == "__main__":
    main()
