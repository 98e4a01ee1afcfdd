"""``vidret serve``: a search page and a JSON API over a run, with thumbnails, playable moments and its report.

The parts, each loaded once at start-up: the run's ``Searcher`` (its text tower, and its index with the
search parameters the index stage tuned), ``Thumbnails`` from its frames, and the files its id map lists.
Nothing else is served: a video or thumbnail is looked up by ``video_id`` (and clip) in the id map, never
by a path taken from the URL, so no URL can name another file. The report (``/run``) is built on its
first request. Every error is a 4xx or 5xx with a one-line JSON body, ``{"error": "..."}``.

The page (``serve_page.html``) is static: its script reads ``?q=&k=`` from the address, asks
``/api/search`` and draws the results, so a search is a link.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict
from pathlib import Path
from urllib.parse import quote

import uvicorn
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response
from starlette.exceptions import HTTPException

from pipeline import defaults
from pipeline.datasets.build import VIDEO_EXTENSIONS
from pipeline.errors import VidretError, first_line
from pipeline.run_folder import locate_run
from pipeline.search import Searcher, SearchHit, check_k, check_query
from pipeline.thumbnails import Thumbnails, run_thumbnails

PAGE = Path(__file__).with_name("serve_page.html")
log = logging.getLogger("vidret.serve")


class NotFound(Exception):
    """A 404 with a one-line reason."""


def error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def video_url(hit: SearchHit) -> str | None:
    """The video's URL on this server, with a media fragment (``#t=start,end``) that plays the moment."""
    if hit.path is None:
        return None
    moment = f"{hit.start_s:g}" + (f",{hit.end_s:g}" if hit.end_s is not None else "")
    return f"/video/{quote(hit.video_id, safe='')}#t={moment}"


class OneLineErrors:
    """A request that fails on the server's side (a damaged frames file, a bug) gets a 500 with a one-line
    JSON error, and one log line; no traceback in either, and the server goes on serving."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        started = False

        async def send_and_note(message):
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, send_and_note)
        except Exception as exception:  # the one place every server-side failure ends
            log.error("error: %s: %s", scope.get("path"), first_line(exception))
            if scope["type"] == "http" and not started:
                await error(500, f"{scope['path']}: {first_line(exception)}")(scope, receive, send)


def create_app(searcher: Searcher, thumbnails: Thumbnails | None = None, report: Callable[[], str] | None = None):
    """The web app over a loaded ``searcher``; thumbnails and the report where the run has them."""
    app = FastAPI(title="vidret", docs_url=None, redoc_url=None, openapi_url=None)
    lock = threading.Lock()  # one query at a time: on a small CPU, concurrent ones only slow each other
    clips = {(video_id, clip) for video_id, clip in zip(searcher.video_ids, searcher.clip_index, strict=True)}
    videos = {video_id: Path(path) for video_id, path in zip(searcher.video_ids, searcher.paths, strict=True) if path}
    page = PAGE.read_text()
    app.add_middleware(OneLineErrors)

    @app.exception_handler(HTTPException)
    def http_error(request: Request, exception: HTTPException) -> JSONResponse:
        reason = "no such page" if exception.status_code == 404 else exception.detail
        return error(exception.status_code, f"{request.url.path}: {reason}")

    @app.exception_handler(RequestValidationError)
    def invalid_parameter(request: Request, exception: RequestValidationError) -> JSONResponse:
        first = exception.errors()[0]
        name = first["loc"][-1]
        return error(400, f"{name}: {first['msg'].lower()}, got {first.get('input')!r}")

    @app.exception_handler(NotFound)
    def not_found(request: Request, exception: NotFound) -> JSONResponse:
        return error(404, str(exception))

    @app.get("/", response_class=HTMLResponse)
    def search_page() -> HTMLResponse:
        return HTMLResponse(page)

    @app.get("/api/search")
    def api_search(q: str = "", k: int = defaults.SERVE_K) -> JSONResponse:
        started = time.perf_counter()
        try:
            query, k = check_query(q, "q"), check_k(k, "k")
        except VidretError as problem:
            return error(400, str(problem))
        with lock:
            texts = searcher.embed([query])
            embedded = time.perf_counter()
            hits = searcher.nearest(texts, k)[0]
        searched = time.perf_counter()
        results = [
            {
                **asdict(hit),
                "thumbnail": f"/thumbnail/{quote(hit.video_id, safe='')}?clip={hit.clip_index}" if thumbnails else None,
                "video": video_url(hit),
            }
            for hit in hits
        ]
        response = JSONResponse({"query": query, "results": results})
        milliseconds = [1000 * (end - start) for start, end in ((started, embedded), (embedded, searched))]
        total = 1000 * (time.perf_counter() - started)
        response.headers["Server-Timing"] = (
            f"text;dur={milliseconds[0]:.3f}, index;dur={milliseconds[1]:.3f}, total;dur={total:.3f}"
        )
        log.info("search: %d chars, k %d, %d results, %.1f ms", len(query), k, len(results), total)
        return response

    @app.get("/thumbnail/{video_id:path}")
    def thumbnail(video_id: str, clip: int = 0) -> Response:
        image = thumbnails.clip_jpeg(video_id, clip) if thumbnails and (video_id, clip) in clips else None
        if image is None:
            raise NotFound(f"no thumbnail of clip {clip} of video {video_id!r} in this run")
        return Response(image, media_type="image/jpeg", headers={"Cache-Control": "max-age=3600"})

    @app.get("/video/{video_id:path}")
    def video(video_id: str) -> FileResponse:
        path = videos.get(video_id)
        if path is None:
            raise NotFound(f"no video {video_id!r} in this run")
        if path.suffix.lower() not in VIDEO_EXTENSIONS or not path.is_file():
            raise NotFound(f"video {video_id!r}: {path} is not a video file (any more)")
        return FileResponse(path)  # answers Range requests with 206, so the player can seek

    @app.get("/run", response_class=HTMLResponse)
    def run_report() -> HTMLResponse:
        if report is None:
            raise NotFound("this server has no run report")
        return HTMLResponse(report())

    @app.get("/healthz")
    def healthz() -> dict:
        return {"status": "ok", "model": searcher.model.spec.model, "clips": searcher.num_clips}

    return app


def open_app(run: Path | str, device: str = "auto") -> tuple[FastAPI, str]:
    """The app over ``run``, loaded, and a line saying what it serves."""
    folder = locate_run(run)
    searcher = Searcher.open(folder.index, device)
    thumbnails = run_thumbnails(folder)
    searcher.embed(["a first query"])  # warms the text tower up, so that the first user's query is not slower
    lock = threading.Lock()

    @functools.cache
    def report() -> str:
        from pipeline.report import build_report  # matplotlib: imported when the report is first asked for

        with lock:
            return build_report(run)

    videos = len(set(searcher.video_ids))
    line = f"serve: {run}: {searcher.num_clips} clips of {videos} videos, {searcher.model.spec.model} text tower" + (
        "" if thumbnails else "; no thumbnails (no frames)"
    )
    notes = [f"serve: note: {missing}" for missing in folder.missing]
    return create_app(searcher, thumbnails, report), "\n".join([line, *notes])


def listening_socket(host: str, port: int) -> socket.socket:
    """A socket bound to ``host:port``; a VidretError (one line) where it cannot be."""
    try:
        family, kind, protocol = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][:3]
        # The protocol too (IPPROTO_TCP, not 0): asyncio sets TCP_NODELAY only on sockets that name it, and
        # without it every answer waited 40 ms for the client's delayed ACK.
        sock = socket.socket(family, kind, protocol)
    except (OSError, UnicodeError) as exception:
        raise VidretError(f"--host {host}: not an address to listen on ({first_line(exception)})") from None
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
        sock.listen(128)  # from now on connections wait for the server rather than being refused
    except OSError as exception:
        sock.close()
        raise VidretError(f"{host}:{port}: cannot listen ({exception.strerror}); pick another --port") from None
    return sock


@contextlib.contextmanager
def serving_in_thread(app, host: str = defaults.SERVE_HOST, port: int = 0) -> Iterator[str]:
    """``app`` served by uvicorn in a thread (a free port by default) while the block runs; yields its base URL.
    For tests and benchmarks, which talk to a real server from the same process."""
    sock = listening_socket(host, port)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    while not server.started:
        if not thread.is_alive():
            raise VidretError(f"the server on {host}:{sock.getsockname()[1]} stopped before it started")
        time.sleep(0.01)
    try:
        yield f"http://{host}:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join()


def serve(
    run: Path | str,
    host: str = defaults.SERVE_HOST,
    port: int = defaults.SERVE_PORT,
    device: str = "auto",
    echo: Callable[[str], None] = print,
) -> None:
    """Serve ``run`` at ``host:port`` until interrupted."""
    if not 0 <= port <= 65535:
        raise VidretError(f"--port must be from 0 to 65535, got {port}")
    sock = listening_socket(host, port)  # first: a busy port fails before the model loads
    app, line = open_app(run, device)
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(message)s"))
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False  # uvicorn's root handler would print each line again
    bound_host, bound_port = sock.getsockname()[:2]
    shown_host = f"[{bound_host}]" if ":" in bound_host else bound_host
    echo(f"{line}\nserve: http://{shown_host}:{bound_port}/ (the search page; /run is the report; Ctrl-C stops)")
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False))
    try:
        server.run(sockets=[sock])
    except KeyboardInterrupt:  # uvicorn shuts down on Ctrl-C, then raises it again: stopping is the normal end
        pass
    echo("serve: stopped")
