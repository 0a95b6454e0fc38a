"""Group commit: answers that arrive together are stored in one transaction.

Each caller awaits until its own sample is committed (durability is unchanged: a request's slot
is released only after its answer is stored), but one transaction carries every sample that
arrived while the previous one was being written, so a fast endpoint is not throttled by one
commit per answer.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor

from dsparity.evals.storage.store import SampleRecord, Store


class GroupWriter:
    def __init__(self, store: Store):
        self.store = store
        # One thread: the store takes one writer at a time anyway.
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="dsparity-store")
        self._pending: list[tuple[SampleRecord, asyncio.Future]] = []
        self._flushing = False

    async def write(self, record: SampleRecord) -> None:
        future = asyncio.get_running_loop().create_future()
        self._pending.append((record, future))
        if not self._flushing:
            self._flushing = True
            asyncio.get_running_loop().create_task(self._flush())
        await future

    async def _flush(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while self._pending:
                batch, self._pending = self._pending, []
                try:
                    await loop.run_in_executor(self._thread, self.store.record_many, [r for r, _ in batch])
                except Exception as exc:  # every caller of this batch learns it was not stored
                    for _, future in batch:
                        if not future.done():
                            future.set_exception(exc)
                    continue
                for _, future in batch:
                    if not future.done():
                        future.set_result(None)
        finally:
            self._flushing = False

    def close(self) -> None:
        self._thread.shutdown(wait=True)
