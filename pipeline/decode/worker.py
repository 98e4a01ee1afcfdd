"""Decode worker processes with a hard per-video timeout.

A decoder can hang inside FFmpeg while holding the GIL (decord does), or crash
the process on a damaged file, so no thread can be trusted with a video. Each
video is decoded in a worker process; the pool kills a worker whose video
passes its deadline, replaces it, and reports the video as ``timeout`` (or
``crashed`` when the worker dies by itself). Either costs only that video.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.connection import wait
from pathlib import Path

from pipeline.decode.reader import TEST_MODE, DecodedVideo, FrameSpec, VideoError, ViewSeeds, read_views
from pipeline.errors import VidretError

Reader = Callable[[Path, FrameSpec, ViewSeeds], list[DecodedVideo]]

WORKER_START_TIMEOUT = 120.0


@dataclass
class DecodeTask:
    seq: int  # position in this run's work order
    video_id: str
    path: Path
    views: ViewSeeds = TEST_MODE


@dataclass
class DecodeResult:
    seq: int
    video_id: str
    status: str
    error: str
    seconds: float
    views: list[DecodedVideo] = field(default_factory=list)  # one per view of the task; none on failure


def decode_task(task: DecodeTask, spec: FrameSpec, reader: Reader = read_views) -> DecodeResult:
    """Run ``reader`` on one video and turn the outcome into a result; never raises."""
    start = time.perf_counter()
    try:
        views = reader(task.path, spec, task.views)
    except VideoError as error:
        return DecodeResult(task.seq, task.video_id, error.status, str(error), time.perf_counter() - start)
    except Exception as error:  # a decoder bug must not end the run; record it against the video
        message = f"{type(error).__name__}: {error}: {task.path}"
        return DecodeResult(task.seq, task.video_id, "unreadable", message, time.perf_counter() - start)
    return DecodeResult(task.seq, task.video_id, "ok", views[0].note, time.perf_counter() - start, views)


def _worker_main(conn, spec: FrameSpec, reader: Reader, log_path: str) -> None:
    # decord and FFmpeg print to the process's stdout and stderr: keep that out of
    # the progress bar, but keep it (the error messages name the problem anyway).
    log = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(log, 1)
    os.dup2(log, 2)
    # The parent handles Ctrl-C; a worker must not die mid-video because of it.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    conn.send("ready")
    while True:
        try:
            task = conn.recv()
        except EOFError:  # the parent is gone (killed, say): nothing left to do
            return
        if task is None:
            return
        conn.send(decode_task(task, spec, reader))


class _Worker:
    def __init__(self, context, spec: FrameSpec, reader: Reader, log_path: Path) -> None:
        self.conn, child = context.Pipe()
        self.process = context.Process(
            target=_worker_main, args=(child, spec, reader, str(log_path)), name="vidret-decode", daemon=True
        )
        self.process.start()
        child.close()
        self.task: DecodeTask | None = None
        self.deadline = 0.0
        if not self.conn.poll(WORKER_START_TIMEOUT) or self._receive_ready() != "ready":
            self.kill()
            raise VidretError(f"a decode worker died or hung while starting; its output is in {log_path}")

    def _receive_ready(self):
        try:
            return self.conn.recv()
        except EOFError:
            return None

    def kill(self) -> None:
        self.process.kill()
        self.process.join()
        self.conn.close()

    def death_cause(self) -> str:
        self.process.join(timeout=5)
        code = self.process.exitcode
        if code is not None and code < 0:
            return f"killed by {signal.Signals(-code).name}"
        return f"exit code {code}"


class DecodePool:
    """``num_workers`` processes, each decoding one video at a time under ``timeout`` seconds."""

    def __init__(self, num_workers: int, spec: FrameSpec, timeout: float, log_path: Path, reader: Reader = read_views):
        # forkserver: workers fork from a clean, single-threaded server with the
        # decoders preloaded, never from this process and its pyarrow threads.
        self._context = multiprocessing.get_context("forkserver")
        decoders = ["av", "decord"] if spec.decoder == "decord" else ["av"]  # decord's path probes with av
        self._context.set_forkserver_preload(["pipeline.decode.reader", *decoders])
        self._spec, self._reader, self._timeout, self._log_path = spec, reader, timeout, log_path
        self._workers: list[_Worker] = []
        try:
            for _ in range(num_workers):
                self._workers.append(self._start_worker())
        except BaseException:
            self.close()
            raise

    def _start_worker(self) -> _Worker:
        return _Worker(self._context, self._spec, self._reader, self._log_path)

    @property
    def idle(self) -> int:
        return sum(worker.task is None for worker in self._workers)

    def submit(self, task: DecodeTask) -> None:
        worker = next(worker for worker in self._workers if worker.task is None)
        worker.conn.send(task)
        worker.task = task
        worker.deadline = time.monotonic() + self._timeout

    def collect(self) -> list[DecodeResult]:
        """Wait until at least one busy worker finishes, dies or passes its deadline."""
        busy = [worker for worker in self._workers if worker.task is not None]
        if not busy:
            return []
        next_deadline = min(worker.deadline for worker in busy)
        ready = wait([worker.conn for worker in busy], timeout=max(0.0, next_deadline - time.monotonic()))
        results = []
        for index, worker in enumerate(self._workers):
            task = worker.task
            if task is None:
                continue
            if worker.conn in ready:
                try:
                    results.append(worker.conn.recv())
                    worker.task = None
                    continue
                except (EOFError, OSError):
                    message = f"the decoder process died ({worker.death_cause()}): {task.path}"
                    results.append(DecodeResult(task.seq, task.video_id, "crashed", message, self._elapsed(worker)))
            elif time.monotonic() >= worker.deadline:
                message = f"no result within {self._timeout:g} s, decoder process killed: {task.path}"
                results.append(DecodeResult(task.seq, task.video_id, "timeout", message, self._elapsed(worker)))
            else:
                continue
            worker.kill()
            self._workers[index] = self._start_worker()
        return results

    def _elapsed(self, worker: _Worker) -> float:
        return time.monotonic() - (worker.deadline - self._timeout)

    def close(self) -> None:
        for worker in self._workers:
            try:
                worker.conn.send(None)
            except OSError:
                pass
        for worker in self._workers:
            worker.process.join(timeout=5)
            if worker.process.is_alive():
                worker.kill()
        self._workers = []
