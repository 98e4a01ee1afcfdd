"""vidret serve: the JSON API against vidret search, thumbnails, Range requests, what is never served, bad
requests, and the command itself; all through a real uvicorn server on 127.0.0.1."""

from __future__ import annotations

import http.client
import io
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import quote, urlencode, urlsplit

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from pipeline import defaults
from pipeline.decode import DecodeOptions, FrameSpec, decode_videos
from pipeline.encode.embed import EmbedOptions, embed
from pipeline.encode.reader import FrameStore
from pipeline.index import IndexOptions, index_embeddings
from pipeline.manifest import write_manifest
from pipeline.search import Searcher
from pipeline.serve import create_app, listening_socket, open_app, serving_in_thread

VIDRET = Path(sys.executable).parent / "vidret"


@pytest.fixture(scope="module")
def server(served_run):
    app, _ = open_app(served_run, device="cpu")
    with serving_in_thread(app) as url:
        yield url


def get(url: str, headers: dict | None = None) -> tuple[int, dict, bytes]:
    """Status, headers (lower-case names) and body of a GET, 4xx and 5xx included."""
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, {k.lower(): v for k, v in response.headers.items()}, response.read()
    except urllib.error.HTTPError as failure:
        return failure.code, {k.lower(): v for k, v in failure.headers.items()}, failure.read()


def raw_get(base: str, target: str) -> tuple[int, bytes]:
    """A GET of ``target`` exactly as written: no client normalises its dots or escapes."""
    address = urlsplit(base)
    connection = http.client.HTTPConnection(address.hostname, address.port, timeout=60)
    connection.putrequest("GET", target, skip_accept_encoding=True)
    connection.endheaders()
    response = connection.getresponse()
    return response.status, response.read()


def one_line_error(body: bytes) -> str:
    """The ``error`` of a JSON error body, checked to be its only field and one line."""
    payload = json.loads(body)
    assert list(payload) == ["error"] and "\n" not in payload["error"] and "Traceback" not in payload["error"]
    return payload["error"]


def api_search(server: str, query: str, k: int) -> dict:
    status, headers, body = get(f"{server}/api/search?{urlencode({'q': query, 'k': k})}")
    assert status == 200, body
    assert headers["content-type"] == "application/json"
    return json.loads(body)


def test_the_api_answers_as_vidret_search_does(server, served_run, tmp_path):
    """Captions of the run and free text: the same clips in the same order with the same scores as
    `vidret search --json`, and URLs on this server for each hit's thumbnail and video."""
    texts = pd.read_parquet(served_run / "embeddings" / "texts.parquet")
    queries = [texts.caption[0], texts.caption[57], "a small green square moves up on a white background"]
    (tmp_path / "queries.txt").write_text("\n".join(queries) + "\n")
    searched = subprocess.run(
        [VIDRET, "search", served_run, "--file", tmp_path / "queries.txt", "--k", "7", "--json", "--device", "cpu"],
        capture_output=True, text=True, timeout=300, check=True,
    )  # fmt: skip
    expected = [json.loads(line) for line in searched.stdout.splitlines()]
    answered = []
    for query in queries:
        body = api_search(server, query, 7)
        assert body["query"] == query and len(body["results"]) == 7
        for hit in body["results"]:
            assert hit.pop("thumbnail") == f"/thumbnail/{quote(hit['video_id'], safe='')}?clip={hit['clip_index']}"
            assert hit.pop("video") == f"/video/{quote(hit['video_id'], safe='')}#t={hit['start_s']:g},{hit['end_s']:g}"
            answered.append({"query": query, **hit})
    assert answered == expected  # ids, clips, times, paths and scores, exactly
    # The run is one of moments: clips after the first come back with their own times.
    assert any(hit["start_s"] > 0 for hit in answered)


def test_a_thumbnail_is_the_clips_middle_sampled_frame(server, served_run):
    store = FrameStore(served_run / "frames")
    video_id = next(video for video in store.locations if store.has_clips(video))
    for clip in store.clips(video_id):
        status, headers, body = get(f"{server}/thumbnail/{video_id}?clip={clip.clip_index}")
        assert status == 200 and headers["content-type"] == "image/jpeg"
        image = np.asarray(Image.open(io.BytesIO(body)))
        middle = store.read(video_id, clip.clip_index)[(clip.real_frames - 1) // 2]
        assert image.shape == middle.shape == (112, 112, 3)
        assert np.abs(image.astype(int) - middle).mean() < 4  # JPEG's loss only
        others = [
            store.read(video_id, clip.clip_index)[i]
            for i in range(clip.real_frames)
            if i != (clip.real_frames - 1) // 2
        ]
        assert all(
            np.abs(image.astype(int) - other).mean() > np.abs(image.astype(int) - middle).mean() for other in others
        )


def test_videos_answer_range_requests_with_the_right_bytes(server, served_run):
    body = api_search(server, "a large blue circle", 1)
    hit = body["results"][0]
    url, data = server + hit["video"].split("#")[0], Path(hit["path"]).read_bytes()
    size = len(data)

    status, headers, whole = get(url)
    assert (status, whole, headers["accept-ranges"], headers["content-type"]) == (200, data, "bytes", "video/mp4")
    asked_and_sent = {
        "bytes=0-99": (0, 99), "bytes=100-": (100, size - 1), "bytes=-50": (size - 50, size - 1),
        f"bytes=10-{size + 500}": (10, size - 1),  # past the end: up to the end
    }  # fmt: skip
    for asked, (start, end) in asked_and_sent.items():
        status, headers, part = get(url, {"Range": asked})
        assert status == 206, asked
        assert headers["content-range"] == f"bytes {start}-{end}/{size}"
        assert part == data[start : end + 1]
    status, headers, _ = get(url, {"Range": f"bytes={size}-"})
    assert status == 416 and headers["content-range"] == f"bytes */{size}"
    status, headers, parts = get(url, {"Range": "bytes=0-9,20-29"})
    assert status == 206 and headers["content-type"].startswith("multipart/byteranges")
    assert data[0:10] in parts and data[20:30] in parts


def test_nothing_but_the_id_maps_videos_and_thumbnails_is_served(server, served_run, tmp_path):
    """Traversal in every spelling, absolute paths, and symlinks out of the run: 404 with a one-line error;
    the run's own files, its manifest and its videos' neighbours are not served either."""
    (served_run / "escape").symlink_to("/etc")
    listed = api_search(server, "a circle", 1)["results"][0]
    neighbour = Path(listed["path"]).with_name("not-listed.mp4")
    shutil.copy(listed["path"], neighbour)
    try:
        for route in ("video", "thumbnail"):
            for target in (
                "../../../../etc/passwd", "..%2f..%2f..%2f..%2fetc%2fpasswd", "%2e%2e/%2e%2e/%2e%2e/etc/passwd",
                "%2e%2e%2f%2e%2e%2f%2e%2e%2fetc%2fpasswd", "%252e%252e%252fetc%252fpasswd", "..%5c..%5cetc%5cpasswd",
                "/etc/passwd", "%2fetc%2fpasswd", quote(listed["path"], safe=""), quote(listed["path"]),
                "escape/passwd", "..%2fescape%2fpasswd", "index/stage.json", "../frames/part-00000.parquet",
                "../data/manifest.jsonl", "not-listed.mp4", quote(str(neighbour), safe=""), "%00", "",
            ):  # fmt: skip
                status, body = raw_get(server, f"/{route}/{target}")
                assert status == 404, (route, target, body)
                one_line_error(body)
        status, body = raw_get(server, f"/thumbnail/{listed['video_id']}?clip=99")
        assert status == 404 and "no thumbnail of clip 99" in one_line_error(body)
        status, body = raw_get(server, f"/video/{listed['video_id']}")
        assert status == 200 and body == Path(listed["path"]).read_bytes()
    finally:
        (served_run / "escape").unlink()
        neighbour.unlink()


@pytest.mark.parametrize(
    ("target", "status", "message"),
    [
        ("/api/search?q=&k=5", 400, "q is empty; give some words to search for"),
        ("/api/search?q=%20%20&k=5", 400, "q is empty"),
        ("/api/search?k=5", 400, "q is empty"),
        (f"/api/search?q={'a' * (defaults.MAX_QUERY_CHARS + 1)}", 400, f"the most is {defaults.MAX_QUERY_CHARS}"),
        ("/api/search?q=red&k=0", 400, f"k must be from 1 to {defaults.MAX_K}, got 0"),
        ("/api/search?q=red&k=-3", 400, "k must be from 1"),
        (f"/api/search?q=red&k={defaults.MAX_K + 1}", 400, "k must be from 1"),
        ("/api/search?q=red&k=99999999999999999999999", 400, "k must be from 1"),
        ("/api/search?q=red&k=abc", 400, "k: input should be a valid integer"),
        ("/api/search?q=red&k=1.5", 400, "k: input should be a valid integer"),
        ("/thumbnail/synth00000?clip=x", 400, "clip: input should be a valid integer"),
        ("/api/nothing", 404, "/api/nothing: no such page"),
    ],
)
def test_a_bad_request_gets_a_4xx_with_one_line_and_the_server_keeps_serving(server, target, status, message):
    answered, body = raw_get(server, target)
    assert answered == status
    assert message in one_line_error(body)
    assert get(f"{server}/healthz")[0] == 200


def test_healthz_and_the_page(server):
    status, _, body = get(f"{server}/healthz")
    assert status == 200 and json.loads(body) == {
        "status": "ok",
        "model": "vidret-tiny",
        "clips": json.loads(body)["clips"],
    }
    status, headers, page = get(f"{server}/?q=red&k=3")
    assert status == 200 and headers["content-type"].startswith("text/html")
    assert b'name="q"' in page and b'name="k"' in page and b"/api/search" in page


def test_every_query_logs_one_line_and_times_its_parts(served_run, caplog):
    caplog.set_level(logging.INFO, logger="vidret.serve")
    with serving_in_thread(create_app(Searcher.open(served_run, "cpu"))) as url:
        status, headers, body = get(f"{url}/api/search?q=a+red+circle&k=4")
        assert get(f"{url}/api/search?q=&k=4")[0] == 400
    assert status == 200
    timings = dict(part.strip().split(";dur=") for part in headers["server-timing"].split(","))
    assert set(timings) == {"text", "index", "total"}
    assert float(timings["text"]) + float(timings["index"]) <= float(timings["total"])
    lines = [record.getMessage() for record in caplog.records if record.name == "vidret.serve"]
    assert len(lines) == 1 and lines[0].startswith("search: 12 chars, k 4, 4 results, ") and lines[0].endswith(" ms")
    # An app without thumbnails (a run whose frames are gone) links none.
    assert json.loads(body)["results"][0]["thumbnail"] is None


def test_a_failure_on_the_servers_side_is_a_500_with_one_line(served_run, tmp_path):
    """Frames deleted under a running server: that thumbnail is a 500 with one line, the rest goes on."""
    run = tmp_path / "run"
    for part in ("frames", "embeddings", "index"):
        shutil.copytree(served_run / part, run / part)
    for name in ("embeddings", "index"):  # point the copies' records at each other
        record = json.loads((run / name / "stage.json").read_text())
        record["input"] = {
            key: value.replace(str(served_run), str(run)) if isinstance(value, str) else value
            for key, value in record["input"].items()
        }
        (run / name / "stage.json").write_text(json.dumps(record))
    app, _ = open_app(run, device="cpu")
    (run / "frames" / "part-00000.parquet").unlink()
    video_id = pd.read_parquet(run / "index" / "video_ids.parquet").video_id[0]
    with serving_in_thread(app) as url:
        status, _, body = get(f"{url}/thumbnail/{video_id}?clip=0")
        assert status == 500 and "part-00000.parquet" in one_line_error(body)
        assert get(f"{url}/api/search?q=red&k=2")[0] == 200


def start_serve(*args) -> subprocess.Popen:
    return subprocess.Popen(
        [VIDRET, "serve", *map(str, args)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def test_the_vidret_serve_command(served_run):
    """It says what it serves and where, on 127.0.0.1 by default, logs each query, stops on Ctrl-C cleanly;
    bad options and a busy port are one line and exit 1."""
    server = start_serve(served_run, "--port", "0", "--device", "cpu")
    try:
        first = server.stdout.readline()
        url = server.stdout.readline().split()[1]
        assert first.startswith(f"serve: {served_run}: ") and " clips of 100 videos, vidret-tiny text tower" in first
        assert url.startswith("http://127.0.0.1:")
        assert get(f"{url}api/search?q=red+square&k=2")[0] == 200
        port = urlsplit(url).port
        busy = subprocess.run(
            [VIDRET, "serve", served_run, "--port", str(port)], capture_output=True, text=True, timeout=300
        )
        assert busy.returncode == 1
        assert busy.stderr == f"error: 127.0.0.1:{port}: cannot listen (Address already in use); pick another --port\n"
    finally:
        server.send_signal(signal.SIGINT)
        _, log = server.communicate(timeout=60)
    assert server.returncode == 0 and "Traceback" not in log
    assert "search: 10 chars, k 2, 2 results, " in log

    for args, message in [
        ((served_run.parent, "--port", "0"), "no videos.faiss here or in"),
        ((served_run, "--port", "70000"), "--port must be from 0 to 65535, got 70000"),
        ((served_run, "--host", "no.such.host.invalid", "--port", "0"), "--host no.such.host.invalid: not an address"),
    ]:
        failed = subprocess.run([VIDRET, "serve", *map(str, args)], capture_output=True, text=True, timeout=300)
        assert failed.returncode == 1 and failed.stderr.count("\n") == 1 and message in failed.stderr, failed.stderr
    assert not os.path.exists(served_run / "report.html")  # serving writes nothing into the run


def test_ids_that_are_paths_with_spaces_and_signs_get_working_urls(served_run, tmp_path):
    """Collection ids are relative paths: slashes, spaces, '#', '?', '%' and non-ASCII letters all round-trip
    through the thumbnail and video URLs."""
    videos = sorted((served_run.parent / "data" / "videos").glob("*.mp4"))[:4]
    ids = ["a/b/clip one.mp4", "café/#2?.mp4", "100%/x.mp4", "../up.mp4"]
    records = [{"video_id": i, "path": str(v), "split": "test", "captions": [f"video {n}"]} for n, (i, v) in
               enumerate(zip(ids, videos, strict=True))]  # fmt: skip
    write_manifest(tmp_path / "manifest.jsonl", records)
    spec = FrameSpec(num_frames=2, size=32)
    decode_videos(tmp_path / "manifest.jsonl", tmp_path / "frames", DecodeOptions(spec=spec, workers=1), progress=False)
    embed(EmbedOptions(tmp_path / "frames", tmp_path / "manifest.jsonl", tmp_path / "embeddings",
                       model="vidret-micro", pretrained="none", device="cpu", progress=False))  # fmt: skip
    index_embeddings(tmp_path / "embeddings", tmp_path / "index", IndexOptions(progress=False))
    app, _ = open_app(tmp_path, device="cpu")
    with serving_in_thread(app) as url:
        results = api_search(url, "video 1", 4)["results"]
        assert sorted(hit["video_id"] for hit in results) == sorted(ids)
        for hit in results:
            status, headers, _ = get(url + hit["thumbnail"])
            assert status == 200 and headers["content-type"] == "image/jpeg", hit
            status, _, data = get(url + hit["video"].split("#")[0])
            assert status == 200 and data == Path(hit["path"]).read_bytes(), hit


def test_the_listening_socket_names_tcp_so_answers_are_not_held_back():
    """asyncio turns Nagle's algorithm off (TCP_NODELAY) only on sockets whose protocol is IPPROTO_TCP; a
    socket made with protocol 0 made every answer wait for the client's delayed ACK (40 ms)."""
    sock = listening_socket("127.0.0.1", 0)
    try:
        assert sock.proto == socket.IPPROTO_TCP
    finally:
        sock.close()
