"""One model, many requests: a bounded queue in front of a single worker thread that owns the
detector and runs the queued images through it in micro-batches.

Every request waits in one ``asyncio.Queue``; memory therefore grows with the queue's images, not
with a model copy or a forward pass per client. When the worker is free it takes what is queued,
up to ``max_batch`` images, and runs them in one forward (the detector takes a list of images of
any sizes and pads them into one batch). A full queue is refused at once (``Busy``), and a request
waits at most its timeout (``TimedOut``); a forward already running is not interrupted (a thread
cannot be), its result is dropped and the worker goes on with the next batch.
"""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import torch

log = logging.getLogger(__name__)


class Busy(RuntimeError):
    """The queue is full."""


class TimedOut(RuntimeError):
    """A request waited and ran longer than its timeout."""


@dataclass
class Job:
    image: torch.Tensor  # 3 x H x W in [0, 1]
    future: asyncio.Future
    queued_at: float = field(default_factory=time.perf_counter)


class Batcher:
    """Queue images for ``detector`` (an ``fpn.api.Detector``) and run them in batches of at most
    ``max_batch`` on one worker thread; at most ``max_queue`` images wait."""

    def __init__(self, detector: Any, *, max_batch: int = 4, max_queue: int = 32):
        if max_batch < 1 or max_queue < 1:
            raise ValueError(f"max_batch and max_queue must be at least 1, got {max_batch}, {max_queue}")
        self.detector = detector
        self.max_batch = max_batch
        self.max_queue = max_queue
        self.batches_run = 0
        self.images_run = 0
        self._queue: asyncio.Queue[Job] | None = None
        self._task: asyncio.Task | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="fpn-model")

    async def start(self) -> None:
        self._queue = asyncio.Queue(maxsize=self.max_queue)
        self._task = asyncio.create_task(self._work(), name="fpn-batcher")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
        self._executor.shutdown(wait=False, cancel_futures=True)

    @property
    def waiting(self) -> int:
        return self._queue.qsize() if self._queue is not None else 0

    async def detect(self, image: torch.Tensor, timeout: float) -> dict[str, torch.Tensor]:
        """The detections of one image, or ``Busy`` / ``TimedOut``."""
        if self._queue is None:
            raise RuntimeError("the batcher is not started")
        future = asyncio.get_running_loop().create_future()
        try:
            self._queue.put_nowait(Job(image, future))
        except asyncio.QueueFull:
            raise Busy(f"busy: {self.max_queue} images are already queued; retry later") from None
        try:
            return await asyncio.wait_for(future, timeout)  # cancels the future on timeout
        except asyncio.TimeoutError:  # the builtin TimeoutError from Python 3.11 on, not before
            raise TimedOut(f"timed out: no result within {timeout:g} s (queued and running); "
                           "retry later") from None

    async def _work(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            jobs = [await self._queue.get()]
            while len(jobs) < self.max_batch and not self._queue.empty():
                jobs.append(self._queue.get_nowait())
            jobs = [job for job in jobs if not job.future.done()]  # timed out while queued: skip
            if not jobs:
                continue
            try:
                outputs = await loop.run_in_executor(self._executor, self._forward, [j.image for j in jobs])
            except Exception as err:  # one bad batch must not stop the worker
                log.exception("detection failed on a batch of %d", len(jobs))
                for job in jobs:
                    if not job.future.done():
                        job.future.set_exception(err)
                continue
            for job, output in zip(jobs, outputs, strict=True):
                if not job.future.done():
                    job.future.set_result(output)

    def _forward(self, images: list[torch.Tensor]) -> list[dict[str, torch.Tensor]]:
        outputs = self.detector(images)
        self.batches_run += 1
        self.images_run += len(images)
        return outputs
