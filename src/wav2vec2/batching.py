"""One model shared by many callers: forward passes run on threads of their own (one by default),
and the model windows of concurrent live streams that have the same length run as one batch.

Why few threads: a CPU has few cores, and many forward passes at once only fight over them; a
queue also bounds the memory of the passes in flight. Why batches: on a CPU, one (B, T) pass
multiplies bigger matrices than B passes of (1, T) and wastes less time between operators
(`benchmarks/server.py` measures by how much); on a GPU it is the only way to fill it. Why
`parallel` passes: passes over the short windows of live streams kept two threads only partly
busy (130-150 % CPU with three and four base streams), so two passes of one thread each can get more done
than one pass of two threads (`benchmarks/server.py --parallel 2` measures it).

Batching is exact only for windows of the same length: padding would change the output of the
checkpoints without an attention mask (their first GroupNorm averages over the padding). So only
equal-length windows share a pass. The fixed windows of streams (interval + 2 * context seconds)
all have the same length, so they batch; partial and last windows batch when their lengths meet.
A batched pass can differ from a pass on one window in the last bits of float rounding.

Callers use `SharedModel.proxy(live)` in place of the model (it has the model's attributes; only a
call is different), so `StreamingRecognizer` and `transcribe_many` run unchanged, each in its own
thread, blocking until their pass is done. Live windows go first, in rounds: the windows queued
when a round starts, grouped by length. File chunks (20 s, much longer passes) run one at a time
between rounds, so neither kind starves the other.
"""

from __future__ import annotations

import threading
from collections import deque
from concurrent.futures import Future
from dataclasses import dataclass, field

import torch


@dataclass
class _Request:
    waveform: torch.Tensor  # (batch, samples)
    attention_mask: torch.Tensor | None
    future: Future = field(default_factory=Future)

    def key(self) -> tuple:
        """Requests with equal keys can be stacked into one batch."""
        return (tuple(self.waveform.shape[1:]), self.waveform.dtype, self.attention_mask is None)


@dataclass
class BatchStats:
    """What the model thread has done: how many passes, and how many live windows they held."""

    passes: int = 0
    live_windows: int = 0
    live_passes: int = 0
    largest_batch: int = 0


class SharedModel:
    """Runs the forward passes of many threads on one model, on `parallel` threads of its own
    (PyTorch's threads of the creating thread shared out among them).

    `max_batch` caps the live windows in one pass (1: no cross-stream batching). Call `close()`
    to stop the threads; requests still queued then fail with RuntimeError.
    """

    def __init__(self, model, max_batch: int = 8, parallel: int = 1):
        if max_batch < 1 or parallel < 1:
            raise ValueError(f"max_batch and parallel must be at least 1, not {max_batch} and {parallel}")
        self.model = model
        self.max_batch = max_batch
        self.stats = BatchStats()
        self._live: deque[_Request] = deque()
        self._files: deque[_Request] = deque()
        self._round: deque[list[_Request]] = deque()  # groups of live windows not yet taken
        self._file_due = False  # a file chunk waited through the round in progress: it goes next
        self._file_running = False  # one file chunk at a time: its pass is the largest in memory
        self._condition = threading.Condition()
        self._closed = False
        self._threads = max(1, torch.get_num_threads() // parallel)  # torch's setting is per thread
        self._workers = [threading.Thread(target=self._work, name=f"wav2vec2-model-{i}", daemon=True)
                         for i in range(parallel)]
        for worker in self._workers:
            worker.start()

    def proxy(self, live: bool) -> ModelProxy:
        """A stand-in for the model whose calls run here: live windows (batched) or file chunks."""
        return ModelProxy(self, live)

    def forward(self, waveform: torch.Tensor, attention_mask: torch.Tensor | None, live: bool) -> torch.Tensor:
        """Queue one call of the model and wait for its logits."""
        request = _Request(waveform, attention_mask)
        with self._condition:
            if self._closed:
                raise RuntimeError("the model is shut down")
            (self._live if live else self._files).append(request)
            self._condition.notify()
        return request.future.result()

    def close(self) -> None:
        with self._condition:
            self._closed = True
            self._condition.notify_all()
        for worker in self._workers:
            worker.join()

    def _work(self) -> None:
        torch.set_num_threads(self._threads)
        with torch.inference_mode():
            while True:
                with self._condition:
                    while not self._closed and (task := self._next()) is None:
                        self._condition.wait()
                    if self._closed:
                        queued = [*self._live, *self._files, *(r for group in self._round for r in group)]
                        self._live.clear()
                        self._files.clear()
                        self._round.clear()
                        for request in queued:
                            request.future.set_exception(RuntimeError("the model is shut down"))
                        return
                requests, live = task
                self._run(requests, live)
                if not live:
                    with self._condition:
                        self._file_running = False
                        self._condition.notify_all()

    def _next(self) -> tuple[list[_Request], bool] | None:
        """The next pass to run (called holding the lock): the next group of the round of live
        windows; between rounds a file chunk, unless one is running; None if nothing can run."""
        if not self._round:
            if self._files and not self._file_running and (self._file_due or not self._live):
                self._file_due, self._file_running = False, True
                return [self._files.popleft()], False
            if self._live:
                self._round.extend(_groups(list(self._live), self.max_batch))
                self._live.clear()
                self._file_due = bool(self._files)  # a chunk that waited through this round goes next
                self._condition.notify()  # the round may hold groups for another model thread too
        if self._round:
            return self._round.popleft(), True
        return None

    def _run(self, requests: list[_Request], live: bool) -> None:
        try:
            if len(requests) == 1:
                outputs = [self.model(requests[0].waveform, requests[0].attention_mask)]
            else:
                waveform = torch.cat([r.waveform for r in requests])
                mask = None if requests[0].attention_mask is None else torch.cat([r.attention_mask for r in requests])
                logits = self.model(waveform, mask)
                sizes = [len(r.waveform) for r in requests]
                outputs = list(logits.split(sizes))
        except BaseException as error:  # noqa: BLE001 (handed to the callers, who raise it)
            for request in requests:
                request.future.set_exception(error)
            return
        with self._condition:
            self.stats.passes += 1
            if live:
                windows = sum(len(r.waveform) for r in requests)
                self.stats.live_passes += 1
                self.stats.live_windows += windows
                self.stats.largest_batch = max(self.stats.largest_batch, windows)
        for request, output in zip(requests, outputs):
            request.future.set_result(output)


def _groups(requests: list[_Request], max_batch: int) -> list[list[_Request]]:
    """Requests of equal shape together, in order of arrival, at most max_batch rows each."""
    by_key: dict[tuple, list[list[_Request]]] = {}
    order: list[list[_Request]] = []
    for request in requests:
        groups = by_key.setdefault(request.key(), [])
        rows = len(request.waveform)
        if not groups or sum(len(r.waveform) for r in groups[-1]) + rows > max_batch:
            groups.append([])
            order.append(groups[-1])
        groups[-1].append(request)
    return order


class ModelProxy:
    """Looks like the model (its config, vocab, preprocessing, device...); calling it queues the
    pass on the SharedModel's thread and waits for the logits."""

    def __init__(self, shared: SharedModel, live: bool):
        self._shared = shared
        self._live = live

    def __getattr__(self, name: str):
        return getattr(self._shared.model, name)

    def __call__(self, waveform: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        return self._shared.forward(waveform, attention_mask, self._live)
