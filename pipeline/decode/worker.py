"""Decode worker processes with a hard per-video timeout.

A decoder can hang inside FFmpeg while holding the GIL (decord does), or crash
the process on a damaged file, so no thread can be trusted with a video. Each
video is decoded in a worker process; the pool kills a worker whose video
passes its deadline, replaces it, and reports the video as ``timeout`` (or
``crashed`` when the worker dies by itself). Either costs only that video.

A worker writes the rows of each video it decodes as the video's piece
(``writer.write_piece``) and sends the pool only the status: the frames cross
no pipe, and a killed run keeps every video a worker finished.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from multiprocessing.connection import wait
from pathlib import Path

import pyarrow as pa

from pipeline.decode.reader import TEST_MODE, DecodedVideo, FrameSpec, VideoError, ViewSeeds, read_views
from pipeline.decode.writer import write_piece
from pipeline.errors import VidretError, os_error_line
from pipeline.files import temporary_path
from pipeline.frames_codec import encode_jpeg

Reader = Callable[[Path, FrameSpec, ViewSeeds], list[DecodedVideo]]

WORKER_START_TIMEOUT = 120.0
# Tasks a worker holds at once: the one it decodes and the next, so that it never waits for
# this process to hand it work.
TASKS_PER_WORKER = 2


@dataclass
class DecodeTask:
    seq: int  # position in this run's work order
    video_id: str
    path: Path
    piece: Path  # where the worker writes the video's rows and status
    key: str  # the piece's key: the video's identity and the parameters
    views: ViewSeeds = TEST_MODE


@dataclass
class DecodeResult:
    seq: int
    video_id: str
    status: str
    error: str
    seconds: float
    views: list[DecodedVideo] = field(default_factory=list)  # one per view of the task; none on failure
    frames: int = 0  # in the video's piece: the result crosses the pipe without its views
    write_error: str = ""  # why the piece could not be written (the disk, not the video): the run stops


def decode_task(task: DecodeTask, spec: FrameSpec, reader: Reader = read_views) -> DecodeResult:
    """Run ``reader`` on one video and turn the outcome into a result; never raises. With
    ``--frame-format jpeg`` the frames are encoded here, in the worker: the coordinator, which writes
    every worker's results, only copies the images into Parquet."""
    start = time.perf_counter()
    try:
        views = reader(task.path, spec, task.views)
        if spec.frame_format == "jpeg":
            views = [replace(video, frames=encode_jpeg(video.frames, spec.jpeg_quality)) for video in views]
    except VideoError as error:
        return DecodeResult(task.seq, task.video_id, error.status, str(error), time.perf_counter() - start)
    except Exception as error:  # a decoder bug must not end the run; record it against the video
        message = f"{type(error).__name__}: {error}: {task.path}"
        return DecodeResult(task.seq, task.video_id, "unreadable", message, time.perf_counter() - start)
    return DecodeResult(task.seq, task.video_id, "ok", views[0].note, time.perf_counter() - start, views)


def decode_into_piece(task: DecodeTask, spec: FrameSpec, schema: pa.Schema, reader: Reader):
    """Decode ``task``'s video and commit its piece; the result without its views. None when the run that
    started this worker was killed meanwhile, so that its workers leave no piece in a rerun's way."""
    result = decode_task(task, spec, reader)
    temporary = temporary_path(task.piece)
    try:
        write_piece(temporary, result, schema, task.key)
        if not multiprocessing.parent_process().is_alive():
            return None
        os.replace(temporary, task.piece)  # no fsync: a piece is there to survive kill -9, not power loss
    except OSError as error:
        return replace(result, views=[], write_error=os_error_line(error))
    finally:
        temporary.unlink(missing_ok=True)
    return replace(result, views=[], frames=sum(len(video.frame_indices) for video in result.views))


def _worker_main(conn, spec: FrameSpec, schema: pa.Schema, reader: Reader, log_path: str) -> None:
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
        result = decode_into_piece(task, spec, schema, reader)
        if result is None:
            return
        conn.send(result)


class _Worker:
    """A started worker process; ``wait_ready`` before giving it a task (start several, then wait)."""

    def __init__(self, context, spec: FrameSpec, schema: pa.Schema, reader: Reader, log_path: Path) -> None:
        self.conn, child = context.Pipe()
        self.process = context.Process(
            target=_worker_main, args=(child, spec, schema, reader, str(log_path)), name="vidret-decode", daemon=True
        )
        self.process.start()
        child.close()
        self.tasks: deque[DecodeTask] = deque()  # sent, in order; the first is being decoded
        self.deadline = 0.0  # of the first
        self._log_path = log_path

    def wait_ready(self) -> None:
        if not self.conn.poll(WORKER_START_TIMEOUT) or self._receive_ready() != "ready":
            self.kill()
            raise VidretError(f"a decode worker died or hung while starting; its output is in {self._log_path}")

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
    """``num_workers`` processes, each decoding one video at a time (the next one queued) under ``timeout``
    seconds and writing its rows, of ``schema``, as the task's piece."""

    def __init__(
        self,
        num_workers: int,
        spec: FrameSpec,
        schema: pa.Schema,
        timeout: float,
        log_path: Path,
        reader: Reader = read_views,
    ) -> None:
        # forkserver: workers fork from a clean, single-threaded server with the
        # decoders and pyarrow preloaded, never from this process and its pyarrow threads.
        self._context = multiprocessing.get_context("forkserver")
        decoders = ["av", "decord"] if spec.decoder == "decord" else ["av"]  # decord's path probes with av
        self._context.set_forkserver_preload(["pipeline.decode.worker", *decoders])
        self._spec, self._schema, self._reader, self._timeout, self._log_path = spec, schema, reader, timeout, log_path
        self._workers: list[_Worker] = []
        try:
            # All of them start at once: each one's start-up overlaps the others'.
            self._workers = [self._spawn() for _ in range(num_workers)]
            for worker in self._workers:
                worker.wait_ready()
        except BaseException:
            self.close()
            raise

    def _spawn(self) -> _Worker:
        return _Worker(self._context, self._spec, self._schema, self._reader, self._log_path)

    @property
    def idle(self) -> int:
        """How many more tasks the workers take now."""
        return sum(TASKS_PER_WORKER - len(worker.tasks) for worker in self._workers)

    def submit(self, task: DecodeTask) -> None:
        self._send(min(self._workers, key=lambda worker: len(worker.tasks)), task)

    def _send(self, worker: _Worker, task: DecodeTask) -> None:
        worker.conn.send(task)
        if not worker.tasks:
            worker.deadline = time.monotonic() + self._timeout
        worker.tasks.append(task)

    def collect(self) -> list[DecodeResult]:
        """Wait until at least one busy worker finishes a video, dies or passes its deadline."""
        busy = [worker for worker in self._workers if worker.tasks]
        if not busy:
            return []
        next_deadline = min(worker.deadline for worker in busy)
        ready = wait([worker.conn for worker in busy], timeout=max(0.0, next_deadline - time.monotonic()))
        results = []
        for index, worker in enumerate(self._workers):
            try:
                while worker.tasks and worker.conn in ready and worker.conn.poll():
                    results.append(worker.conn.recv())
                    worker.tasks.popleft()
                    worker.deadline = time.monotonic() + self._timeout  # the next one starts now
            except (EOFError, OSError):
                task = worker.tasks.popleft()
                message = f"the decoder process died ({worker.death_cause()}): {task.path}"
                results.append(DecodeResult(task.seq, task.video_id, "crashed", message, self._elapsed(worker)))
            else:
                if not worker.tasks or time.monotonic() < worker.deadline:
                    continue
                task = worker.tasks.popleft()
                message = f"no result within {self._timeout:g} s, decoder process killed: {task.path}"
                results.append(DecodeResult(task.seq, task.video_id, "timeout", message, self._elapsed(worker)))
            worker.kill()
            self._workers[index] = self._spawn()
            self._workers[index].wait_ready()
            for task in worker.tasks:  # not started: the new worker takes them
                self._send(self._workers[index], task)
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
