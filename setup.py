"""Packaging glue: ship the repository's `tasks/` folder inside the wheel as `dsparity/builtin_tasks`.

Everything else lives in pyproject.toml. `dsparity.evals.tasks.BUILTIN_TASKS` finds the packaged
copy in an installed wheel and the repository's `tasks/` in a checkout (or editable install).
"""

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

TASKS = Path(__file__).resolve().parent / "tasks"


class BuildPyWithTasks(build_py):
    def run(self):
        super().run()
        if getattr(self, "editable_mode", False) or not TASKS.is_dir():
            return  # an editable install reads tasks/ from the checkout itself
        target = Path(self.build_lib) / "dsparity" / "builtin_tasks"
        shutil.rmtree(target, ignore_errors=True)
        shutil.copytree(TASKS, target, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))


setup(cmdclass={"build_py": BuildPyWithTasks})
