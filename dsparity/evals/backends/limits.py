"""Client-side pacing for remote APIs: request/token rate limits and a shared 429 cool-down."""

from __future__ import annotations

import asyncio
import time


class RateLimiter:
    """Sliding one-minute windows for requests per minute and tokens per minute.

    Tokens are counted when a request is sent, from an estimate (prompt chars / 4 + max_tokens),
    which is what providers meter against before they know the real usage.
    """

    def __init__(self, rpm: float | None = None, tpm: float | None = None):
        self.rpm, self.tpm = rpm, tpm
        self._sent: list[tuple[float, int]] = []  # (time, tokens)
        self._lock = asyncio.Lock()

    async def acquire(self, tokens: int) -> None:
        if not self.rpm and not self.tpm:
            return
        async with self._lock:
            while True:
                now = time.monotonic()
                self._sent = [(t, n) for t, n in self._sent if now - t < 60.0]
                wait = self._wait_needed(now, tokens)
                if wait <= 0:
                    self._sent.append((now, tokens))
                    return
                await asyncio.sleep(wait)

    def _wait_needed(self, now: float, tokens: int) -> float:
        waits = [0.0]
        if self.rpm and len(self._sent) >= self.rpm:
            waits.append(60.0 - (now - self._sent[-int(self.rpm)][0]))
        if self.tpm:
            used = sum(n for _, n in self._sent)
            if used + tokens > self.tpm and self._sent:
                # wait until enough of the window has expired to make room
                need, freed = used + tokens - self.tpm, 0
                for t, n in self._sent:
                    freed += n
                    if freed >= need:
                        waits.append(60.0 - (now - t))
                        break
        return max(waits)


class CoolDown:
    """After a 429 every worker pauses, not just the one that was told to slow down."""

    def __init__(self) -> None:
        self._until = 0.0

    def push(self, seconds: float) -> None:
        self._until = max(self._until, time.monotonic() + seconds)

    async def wait(self) -> None:
        delay = self._until - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
