"""One model, many requests: a bounded queue in front of a single worker thread that owns the
detector and runs the queued images through it in micro-batches.

Every request waits in one ``asyncio.Queue``; memory therefore grows with the queue's images, not
with a model copy or a forward pass per client. When the worker is free it takes what is queued,
up to ``max_batch`` images, and runs them in one forward (the detector takes a list of images of
any sizes and pads them into one batch). A full queue is refused at once (``Busy``), and a request
waits at most its timeout (``TimedOut``).

A watchdog keeps one hung forward (a model that never returns) from blocking every later request:
a forward that has run ``hang_seconds`` is abandoned, its requests get ``TimedOut``, and a new
worker thread takes over the queue. A Python thread cannot be stopped, so the old one runs on
(its result is dropped when it returns); while ``max_hung`` of them have not returned, the
batcher refuses work (``Hung``) and reports it, for a supervisor to restart the server.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

import torch

log = logging.getLogger(__name__)


class Busy(RuntimeError):
    """The queue is full."""


class TimedOut(RuntimeError):
    """A request waited and ran longer than its timeout."""


class Hung(RuntimeError):
    """Too many abandoned forward passes have not returned: the model is not answering."""


@dataclass
class Job:
    image: torch.Tensor  # 3 x H x W in [0, 1]
    future: asyncio.Future


class Batcher:
    """Queue images for ``detector`` (an ``fpn.api.Detector``) and run them in batches of at most
    ``max_batch`` on one worker thread; at most ``max_queue`` images wait."""

    def __init__(self, detector: Any, *, max_batch: int = 4, max_queue: int = 32, hang_seconds: float = 30.0,
                 max_hung: int = 2):
        if max_batch < 1 or max_queue < 1:
            raise ValueError(f"max_batch and max_queue must be at least 1, got {max_batch}, {max_queue}")
        self.detector = detector
        self.max_batch = max_batch
        self.max_queue = max_queue
        self.hang_seconds = hang_seconds
        self.max_hung = max_hung
        self.batches_run = 0
        self.images_run = 0
        self.workers_replaced = 0
        self._hung: set[asyncio.Future] = set()  # abandoned forward passes that have not returned
        self._queue: asyncio.Queue[Job] | None = None
        self._task: asyncio.Task | None = None
        self._worker = _Worker()

    async def start(self) -> None:
        self._queue = asyncio.Queue(maxsize=self.max_queue)
        self._task = asyncio.create_task(self._work(), name="fpn-batcher")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
        self._worker.stop()

    @property
    def waiting(self) -> int:
        return self._queue.qsize() if self._queue is not None else 0

    @property
    def hung(self) -> int:
        """Abandoned forward passes still running."""
        return len(self._hung)

    @property
    def answering(self) -> bool:
        """False while ``max_hung`` abandoned forward passes have not returned."""
        return self.hung < self.max_hung

    async def detect(self, image: torch.Tensor, timeout: float) -> dict[str, torch.Tensor]:
        """The detections of one image, or ``Busy`` / ``TimedOut``."""
        if self._queue is None:
            raise RuntimeError("the batcher is not started")
        if not self.answering:
            raise Hung(f"the model is not answering: {self.hung} forward passes have run over "
                       f"{self.hang_seconds:g} s; restart the server")
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
        while True:
            jobs = [await self._queue.get()]
            while len(jobs) < self.max_batch and not self._queue.empty():
                jobs.append(self._queue.get_nowait())
            jobs = [job for job in jobs if not job.future.done()]  # timed out while queued: skip
            if not jobs:
                continue
            forward = asyncio.wrap_future(self._worker.submit(self._forward, [j.image for j in jobs]))
            try:  # shielded: the watchdog's timeout must not cancel the thread's future
                outputs = await asyncio.wait_for(asyncio.shield(forward), self.hang_seconds)
            except asyncio.TimeoutError:
                self._replace_worker(forward, jobs)
                continue
            except Exception as err:  # one bad batch must not stop the worker
                log.exception("detection failed on a batch of %d", len(jobs))
                for job in jobs:
                    if not job.future.done():
                        job.future.set_exception(err)
                continue
            for job, output in zip(jobs, outputs, strict=True):
                if not job.future.done():
                    job.future.set_result(output)

    def _replace_worker(self, forward: asyncio.Future, jobs: list[Job]) -> None:
        """The watchdog: abandon a forward that has run ``hang_seconds``; a new thread serves on."""
        self._hung.add(forward)
        forward.add_done_callback(self._returned)
        self._worker.stop()  # its thread ends when (if ever) the forward returns
        self._worker = _Worker()
        self.workers_replaced += 1
        log.error("a forward pass of %d image(s) has run %g s: abandoned, a new worker serves the queue "
                  "(%d abandoned still running)", len(jobs), self.hang_seconds, self.hung)
        for job in jobs:
            if not job.future.done():
                job.future.set_exception(TimedOut(f"timed out: the model did not answer within "
                                                  f"{self.hang_seconds:g} s; retry later"))

    def _returned(self, forward: asyncio.Future) -> None:
        """An abandoned forward returned at last: its thread is free, its result is dropped."""
        self._hung.discard(forward)
        if not forward.cancelled() and forward.exception() is not None:
            log.warning("an abandoned forward pass failed: %s", forward.exception())

    def _forward(self, images: list[torch.Tensor]) -> list[dict[str, torch.Tensor]]:
        outputs = self.detector(images)
        self.batches_run += 1
        self.images_run += len(images)
        return outputs


class _Worker:
    """One daemon thread that runs what is submitted, in order: a forward that never returns keeps
    its thread, but not the process, alive (a ThreadPoolExecutor's threads are joined at exit)."""

    def __init__(self):
        self._tasks: queue.SimpleQueue = queue.SimpleQueue()
        threading.Thread(target=self._run, name="fpn-model", daemon=True).start()

    def submit(self, fn: Any, *args: Any) -> Future:
        future: Future = Future()
        self._tasks.put((future, fn, args))
        return future

    def stop(self) -> None:
        self._tasks.put(None)

    def _run(self) -> None:
        while (task := self._tasks.get()) is not None:
            future, fn, args = task
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(fn(*args))
            except BaseException as err:  # noqa: BLE001 - handed to the waiting request
                future.set_exception(err)
