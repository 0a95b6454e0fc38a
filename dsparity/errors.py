"""The one error type users see: what went wrong, where, and how to fix it."""

from __future__ import annotations

from dsparity.redact import redact


class DsparityError(Exception):
    """Bad input or an unusable environment, reported as one readable line.

    ``source`` names the thing (a file, a model spec, a flag), ``field`` the part of it,
    ``problem`` what is wrong and ``fix`` what the user should do. The line is redacted: a
    database URL or an API key that a part carries never reaches the user's screen, a job's
    recorded cause or a webhook.
    """

    def __init__(self, source: str, field: str, problem: str, fix: str = ""):
        self.source, self.field, self.problem, self.fix = source, field, problem, fix
        super().__init__(self.line())

    def line(self) -> str:
        where = f"{self.source}: {self.field}" if self.field else self.source
        return redact(f"{where}: {self.problem}" + (f" (fix: {self.fix})" if self.fix else ""))
