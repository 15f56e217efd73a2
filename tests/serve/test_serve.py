"""``fpn serve`` against a real server process on loopback: the API, every bad upload of issue 16,
timeouts, a small concurrent load, the OpenAPI schema (schemathesis), and the page in headless
Chromium. The queue itself (micro-batching, busy, timeout) is tested in-process at the end."""

from __future__ import annotations

import asyncio
import io
import json
import os
import select
import socket
import struct
import subprocess
import sys
import threading
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("fastapi", reason="the serve extra is not installed: pip install 'fpn[serve]'")
httpx = pytest.importorskip("httpx")

from fpn.cli import main  # noqa: E402
from tests.conftest import TINY_MODEL, assert_same_detections  # noqa: E402

CHROMIUM = Path("/usr/bin/chromium")
# the tiny test model on 256-px inputs, its level mapper scaled down (canonical 32 px instead of 224)
# so that its RoIs land on several pyramid levels
RUN_MODEL = [*TINY_MODEL, "model.input.min_size_test=256", "model.input.max_size=256",
             "model.roi_heads.num_classes=3", "model.class_names=[circle, square, triangle]",
             "model.category_ids=[11, 12, 13]", "model.roi_heads.canonical_scale=32"]
SERVER_ARGS = ["--set", "model.roi_heads.score_thresh=0", "--max-upload-mb", "2", "--max-megapixels", "4",
               "--timeout", "20", "--max-batch", "4", "--max-queue", "32"]


def make_run(root: Path, extra: tuple[str, ...] = ()) -> Path:
    """An untrained run of the tiny detector (random weights, seeded)."""
    from fpn.config.files import load_config
    from fpn.config.schema import Config, to_dict
    from fpn.engine.checkpoint import save_checkpoint
    from fpn.model.detector import FasterRCNN

    torch.manual_seed(0)
    model = FasterRCNN(load_config("demo", [*RUN_MODEL, *extra]).model)
    save_checkpoint(root / "checkpoints", 0, model.state_dict(), None, to_dict(Config(model=model.cfg)))
    return root


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Server:
    """``python -m fpn serve`` in a subprocess on a free loopback port."""

    def __init__(self, run: Path, args: list[str], log: Path):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        src = str(Path(__file__).resolve().parents[2] / "src")
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([src, os.environ.get("PYTHONPATH", "")])}
        self.log = log
        self.process = subprocess.Popen(
            [sys.executable, "-m", "fpn", "serve", str(run), "--port", str(self.port), *args],
            stdout=log.open("w"), stderr=subprocess.STDOUT, env=env)

    def wait_ready(self, seconds: float = 180) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            if self.process.poll() is not None:
                raise RuntimeError(f"the server exited: {self.log.read_text()[-2000:]}")
            try:
                if httpx.get(f"{self.url}/health", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.3)
        raise TimeoutError(f"the server did not start in {seconds} s: {self.log.read_text()[-2000:]}")

    def rss_mib(self, field: str = "VmRSS") -> float:
        """Resident memory of the server process now (VmRSS) or at its peak (VmHWM)."""
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
        raise KeyError(field)

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    return make_run(tmp_path_factory.mktemp("serve_run"))


@pytest.fixture(scope="module")
def server(run_dir, tmp_path_factory):
    srv = Server(run_dir, SERVER_ARGS, tmp_path_factory.mktemp("serve_log") / "server.log")
    try:
        srv.wait_ready()
        yield srv
    finally:
        srv.stop()


def png_bytes(size=(320, 240), colour=(128, 128, 128)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, format="PNG")
    return buffer.getvalue()


def photo_bytes(seed: int = 0, size=(320, 240)) -> bytes:
    """A JPEG with some structure (blocks of colour), so the detector has edges to look at."""
    generator = torch.Generator().manual_seed(seed)
    blocks = (torch.rand(3, size[1] // 40, size[0] // 40, generator=generator) * 255).to(torch.uint8)
    pixels = blocks.repeat_interleave(40, 1).repeat_interleave(40, 2).permute(1, 2, 0).numpy()
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def detect(url: str, data: bytes, content_type: str = "image/jpeg", **params) -> httpx.Response:
    return httpx.post(f"{url}/detect", files={"image": ("photo.jpg", data, content_type)}, params=params,
                      timeout=60)


def assert_still_serving(url: str) -> None:
    assert httpx.get(f"{url}/health", timeout=10).json()["status"] == "ok"
    assert detect(url, photo_bytes()).status_code == 200


def assert_one_line_error(response: httpx.Response, status: int, words: str, case: str = "") -> None:
    assert response.status_code == status, f"{case}: {response.status_code} {response.text}"
    detail = response.json()["detail"]
    assert isinstance(detail, str) and "\n" not in detail and words in detail, f"{case}: {detail!r}"


@pytest.mark.slow
def test_health_schema_and_page(server):
    health = httpx.get(f"{server.url}/health").json()
    assert health["status"] == "ok" and health["classes"] == ["circle", "square", "triangle"]
    assert health["levels"] == ["p2", "p3", "p4", "p5"]
    assert (health["canonical_scale"], health["canonical_level"]) == (32, 4)  # the page shows this Eq. 1
    schema = httpx.get(f"{server.url}/openapi.json").json()
    assert {"/detect", "/health"} <= set(schema["paths"])
    assert {"400", "413", "415", "503"} <= set(schema["paths"]["/detect"]["post"]["responses"])
    page = httpx.get(f"{server.url}/")
    assert page.status_code == 200 and "<canvas" in page.text
    assert page.headers["content-type"].startswith("text/html")


@pytest.mark.slow
def test_detections_match_the_python_api(server, run_dir):
    """The JSON holds what ``fpn.api.Detector`` gives on the same image: boxes in the image's pixels,
    labels, names, the RoI level, and the same detections as COCO results."""
    from fpn.api import Detector

    data = photo_bytes(seed=3, size=(480, 360))
    body = detect(server.url, data).json()
    assert (body["width"], body["height"]) == (480, 360)
    want = Detector.from_checkpoint(run_dir, "cpu", ["model.roi_heads.score_thresh=0"])(
        Image.open(io.BytesIO(data)))
    assert len(body["detections"]) == len(want["boxes"]) > 0
    got_boxes = torch.tensor([d["box"] for d in body["detections"]])
    torch.testing.assert_close(got_boxes, want["boxes"], atol=0.01, rtol=0)  # JSON rounds to 0.01 px
    assert [d["level"] for d in body["detections"]] == want["levels"].tolist()
    assert [d["name"] for d in body["detections"]] == want["names"]
    assert {d["category_id"] for d in body["detections"]} <= {11, 12, 13}
    assert len({d["level"] for d in body["detections"]}) >= 2, "RoIs of several sizes: several levels"
    for det, coco in zip(body["detections"], body["coco"], strict=True):
        x1, y1, x2, y2 = det["box"]
        assert coco["bbox"] == pytest.approx([x1, y1, x2 - x1, y2 - y1], abs=0.02)
        assert (coco["score"], coco["category_id"]) == (det["score"], det["category_id"])
        assert 0 <= x1 <= x2 <= 480 and 0 <= y1 <= y2 <= 360
    cut = sorted(d["score"] for d in body["detections"])[len(body["detections"]) // 2]
    kept = detect(server.url, data, min_score=cut).json()["detections"]
    assert kept and all(d["score"] >= cut for d in kept)


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that claims ``width`` x ``height`` but holds almost no pixel data (one empty IDAT)."""
    def chunk(kind: bytes, payload: bytes) -> bytes:
        crc = struct.pack(">I", zlib.crc32(kind + payload))
        return struct.pack(">I", len(payload)) + kind + payload + crc

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b""))


def png_bomb(side: int = 20000) -> bytes:
    """A real decompression bomb: a valid 1-bit ``side`` x ``side`` PNG (400 megapixels) of a few
    hundred KB, built row by row without holding the image."""
    ihdr = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)  # 1-bit greyscale
    compressor, row = zlib.compressobj(9), b"\x00" * (1 + side // 8)  # filter byte + packed bits
    idat = b"".join(compressor.compress(row) for _ in range(side)) + compressor.flush()

    def chunk(kind: bytes, payload: bytes) -> bytes:
        crc = struct.pack(">I", zlib.crc32(kind + payload))
        return struct.pack(">I", len(payload)) + kind + payload + crc

    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def raw_post(port: int, headers: dict[str, str], body: bytes) -> tuple[int, dict]:
    """POST /detect over a plain socket: send ``headers`` and ``body`` (maybe less than the
    Content-Length announced), then read the answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        sock.sendall(f"POST /detect HTTP/1.1\r\nHost: 127.0.0.1\r\n{head}\r\n".encode() + body)
        reply = b""
        while b"\r\n\r\n" not in reply or len(reply.split(b"\r\n\r\n", 1)[1]) < content_length(reply):
            chunk = sock.recv(65536)
            if not chunk:
                break
            reply += chunk
    status = int(reply.split(b" ", 2)[1])
    return status, json.loads(reply.split(b"\r\n\r\n", 1)[1])


def chunked_post(port: int, total: int) -> tuple[int, dict, int]:
    """POST /detect a chunked multipart upload of ``total`` bytes, 1 MiB a chunk, until the server
    answers; (status, JSON body, bytes sent by then)."""
    part = (b'--b\r\nContent-Disposition: form-data; name="image"; filename="big.jpg"\r\n'
            b"Content-Type: image/jpeg\r\n\r\n")
    chunk = b"\0" * 2**20
    sent = 0
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(b"POST /detect HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n"
                     b"Content-Type: multipart/form-data; boundary=b\r\n\r\n"
                     + f"{len(part):x}\r\n".encode() + part + b"\r\n")
        reply = b""
        while sent < total and not select.select([sock], [], [], 0)[0]:
            try:
                sock.sendall(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
            except OSError:  # the server closed its side after answering
                break
            sent += len(chunk)
        while b"\r\n\r\n" not in reply or len(reply.split(b"\r\n\r\n", 1)[1]) < content_length(reply):
            data = sock.recv(65536)
            if not data:
                break
            reply += data
    return int(reply.split(b" ", 2)[1]), json.loads(reply.split(b"\r\n\r\n", 1)[1]), sent


def content_length(reply: bytes) -> int:
    for line in reply.split(b"\r\n\r\n", 1)[0].split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            return int(line.split(b":")[1])
    return 1 << 30


@pytest.mark.slow
def test_every_bad_upload_is_a_4xx_with_one_line_and_the_server_keeps_serving(server):
    url, good = server.url, photo_bytes()
    cases = [
        ("not an image", lambda: detect(url, b"%PDF-1.4 this is not an image " * 50), 400, "not an image"),
        ("truncated JPEG", lambda: detect(url, good[: len(good) // 2]), 400, "could not decode the JPEG"),
        ("truncated PNG", lambda: detect(url, png_bytes()[:200], "image/png"), 400,
         "could not decode the PNG"),
        ("empty file", lambda: detect(url, b""), 400, "empty file"),
        ("20000x20000 bomb", lambda: detect(url, png_bomb(), "image/png"), 413, "decompression-bomb"),
        ("over the pixel limit", lambda: detect(url, png_header_only(4000, 2000), "image/png"), 413,
         "4000x2000 = 8.0 megapixels"),
        ("text part", lambda: detect(url, good, "text/plain"), 415, "text/plain"),
        ("raw image body", lambda: httpx.post(f"{url}/detect", content=good,
                                              headers={"content-type": "image/jpeg"}), 415, "multipart"),
        ("json body", lambda: httpx.post(f"{url}/detect", json={"image": "x"}), 415, "multipart"),
        ("empty body", lambda: httpx.post(f"{url}/detect", content=b"",
                                          headers={"content-type": "multipart/form-data; boundary=x"}),
         400, "empty body"),
        ("no image field", lambda: httpx.post(f"{url}/detect", files={"picture": ("a.jpg", good, "jpeg")}),
         400, "image"),
        ("bad min_score", lambda: detect(url, good, min_score=2), 400, "min_score"),
    ]
    for name, send, status, words in cases:
        assert_one_line_error(send(), status, words, case=name)
        assert_still_serving(url)


@pytest.mark.slow
def test_a_100_mb_upload_is_refused_without_being_read(server):
    url = server.url
    # announced: refused from the Content-Length alone, after 1 MB of the 100 MB was sent
    status, body = raw_post(server.port, {"Content-Type": "multipart/form-data; boundary=b",
                                          "Content-Length": str(100 * 2**20)}, b"\0" * 2**20)
    assert status == 413 and "100.0 MiB" in body["detail"]
    # streamed without a length (chunked): a well-formed multipart file part that would be 100 MB;
    # the answer comes once the body passes the 2 MiB cap, long before the client is done
    rss_before = server.rss_mib()
    status, body, sent = chunked_post(server.port, total=100 * 2**20)
    assert status == 413 and "upload too large" in body["detail"]
    assert sent < 20 * 2**20, f"the answer came after {sent / 2**20:.0f} MiB were sent"
    assert server.rss_mib() - rss_before < 50
    assert_still_serving(url)


@pytest.mark.slow
def test_a_request_over_its_timeout_gets_503_and_the_server_recovers(server):
    response = detect(server.url, photo_bytes(), timeout=0.001)
    assert_one_line_error(response, 503, "timed out")
    assert_still_serving(server.url)


@pytest.mark.slow
def test_concurrent_clients_share_one_model(server):
    """16 requests from 8 clients: no errors, and memory does not grow by a model per client."""
    images = [photo_bytes(seed=i) for i in range(16)]
    before = httpx.get(f"{server.url}/health").json()
    rss_before = server.rss_mib()
    statuses = []

    def client(batch):
        with httpx.Client(timeout=60) as session:
            for data in batch:
                statuses.append(session.post(f"{server.url}/detect",
                                             files={"image": ("a.jpg", data, "image/jpeg")}).status_code)

    threads = [threading.Thread(target=client, args=(images[i::8],)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert statuses == [200] * 16
    after = httpx.get(f"{server.url}/health").json()
    assert after["images_run"] - before["images_run"] == 16
    # --max-batch 4: 16 images take at least 4 forwards (that batching happens is tested without
    # timing below, in test_uploads_that_wait_for_the_model_run_as_one_batch)
    assert after["batches_run"] - before["batches_run"] >= 16 / 4
    assert server.rss_mib() - rss_before < 200  # the tiny model is a few MB; 8 copies would not be the point


class HoldsItsFirstBatch:
    """The served detector, whose first forward waits until ``release`` is set (as a slow first
    request would keep the model busy); records the size of every batch it is given."""

    def __init__(self, detector):
        self.detector, self.release, self.batches = detector, threading.Event(), []

    def __getattr__(self, name):
        return getattr(self.detector, name)

    def __call__(self, images):
        self.batches.append(len(images))
        if len(self.batches) == 1:
            assert self.release.wait(120), "the test never released the first batch"
        return self.detector(images)


async def _until(condition, what: str, seconds: float = 120) -> None:
    """Wait for ``condition()`` (a guard against a hang, not a timing assumption)."""
    end = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < end, f"waited {seconds} s for {what}"
        await asyncio.sleep(0.01)


def test_uploads_that_wait_for_the_model_run_as_one_batch(run_dir):
    """The app end to end (upload, decode, queue, the real detector, JSON), in-process: while the model
    is busy with one upload, five more arrive; they reach the model together, at most ``max_batch``
    (4) at a time, and each answer is its own image's. No timing: the first forward is held until the
    five are queued. (The uploads have one size: a batch pads its images to the largest, which moves
    the detections of smaller ones a little, so only same-size images give a batch's detections
    equal to each image's own.)"""
    from fpn.api import Detector
    from fpn.serve.app import ServeSettings, build_app

    held = HoldsItsFirstBatch(Detector.from_checkpoint(run_dir, "cpu", ["model.roi_heads.score_thresh=0"]))
    uploads = [photo_bytes(seed=i) for i in range(6)]
    app = build_app(held, ServeSettings(max_batch=4, max_queue=16))

    async def scenario():
        transport = httpx.ASGITransport(app=app)
        async with app.router.lifespan_context(app), httpx.AsyncClient(transport=transport,
                                                                       base_url="http://serve") as client:
            def post(data):
                upload = {"image": ("a.jpg", data, "image/jpeg")}
                return asyncio.create_task(client.post("/detect", files=upload, timeout=120))

            first = post(uploads[0])
            await _until(lambda: held.batches, "the first forward")
            rest = [post(data) for data in uploads[1:]]
            await _until(lambda: app.state.batcher.waiting == 5, "five queued uploads")
            held.release.set()
            responses = await asyncio.gather(first, *rest)
            return responses, (await client.get("/health")).json()

    responses, health = asyncio.run(scenario())
    assert held.batches == [1, 4, 1], f"batches of {held.batches} for 1 + 5 queued images"
    assert (health["batches_run"], health["images_run"]) == (3, 6)
    for data, response in zip(uploads, responses, strict=True):
        assert response.status_code == 200, response.text
        detections = response.json()["detections"]
        got = {"boxes": torch.tensor([d["box"] for d in detections]),
               "scores": torch.tensor([d["score"] for d in detections]),
               "labels": torch.tensor([d["label"] for d in detections])}
        alone = held.detector(Image.open(io.BytesIO(data)))
        # the JSON rounds boxes to 0.01 px and scores to 1e-5; a batch of 4 rounds differently from 1
        assert_same_detections(alone, got, box_tol=0.02, score_tol=2e-5)


@pytest.mark.slow
def test_the_api_conforms_to_its_openapi_schema(server):
    schemathesis = pytest.importorskip("schemathesis")
    from hypothesis import HealthCheck, Phase, given, settings
    from schemathesis.specs.openapi.checks import positive_data_acceptance

    schema = schemathesis.openapi.from_url(f"{server.url}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert {op.path for op in operations} == {"/detect", "/health"}
    for operation in operations:
        @given(case=operation.as_strategy())
        @settings(max_examples=6, deadline=None, database=None, phases=[Phase.explicit, Phase.generate],
                  suppress_health_check=list(HealthCheck))
        def conforms(case):
            # positive_data_acceptance expects any schema-valid body to be accepted, but the schema can
            # only say "binary": random bytes are rightly refused (400, not an image)
            case.call_and_validate(base_url=server.url, excluded_checks=[positive_data_acceptance])

        conforms()
    assert_still_serving(server.url)


@pytest.mark.skipif(not CHROMIUM.exists(), reason="no Chromium at /usr/bin/chromium (Debian package "
                    "'chromium'; scripts/setup.sh installs it with apt-get when it can)")
@pytest.mark.slow
def test_the_page_draws_the_boxes_in_headless_chromium(server, tmp_path):
    """Upload through the page's file input; in a screenshot of the canvas, the edges of the box the
    page drew last carry its level's colour where the JSON puts the box, and are grey without it."""
    playwright = pytest.importorskip("playwright.sync_api")
    image = tmp_path / "grey.png"
    image.write_bytes(png_bytes((320, 240)))  # uniform grey: any coloured pixel was drawn
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=[
            "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync"])
        try:
            page = browser.new_page(viewport={"width": 1200, "height": 900})
            page.goto(server.url + "/")
            page.set_input_files("#file", str(image))
            page.wait_for_function("document.body.dataset.state === 'drawn'", timeout=60_000)
            result = page.evaluate("window.fpnLast")
            colours = page.evaluate("window.LEVEL_COLOURS")
            best = max(d["score"] for d in result["detections"])
            set_slider(page, best)  # only the best box(es) stay
            drawn = page.evaluate("window.fpnDrawn")
            shown = np.asarray(Image.open(io.BytesIO(page.screenshot())).convert("RGB")).astype(int)
            legend = page.inner_text("#legend")
            assert page.inner_text("#canonical") == "32"  # the served model's Eq. 1, from /health
            set_slider(page, 1.0)  # nothing scores 1: no box
            bare = np.asarray(Image.open(io.BytesIO(page.screenshot())).convert("RGB")).astype(int)
            box = page.locator("#canvas").bounding_box()
        finally:
            browser.close()
    assert drawn and all(d["score"] >= best for d in drawn)
    # the canvas without boxes: the grey region around where the page laid out the canvas
    x, y = int(box["x"]), int(box["y"])
    window = bare[y - 2:y + 244, x - 2:x + 324]
    ys, xs = np.nonzero((np.abs(window - 128) <= 2).all(axis=2))
    x0, y0 = x - 2 + xs.min(), y - 2 + ys.min()
    assert (xs.max() - xs.min() + 1, ys.max() - ys.min() + 1) == (320, 240)
    top = drawn[-1]
    want = [int(colours[str(top["level"])][i:i + 2], 16) for i in (1, 3, 5)]
    for x, y in edge_midpoints(top["box"], (320, 240)):
        assert close(shown[y0 + y, x0 + x], want), f"{shown[y0 + y, x0 + x]} at {(x, y)}, want {want}"
        assert close(bare[y0 + y, x0 + x], [128, 128, 128])
    assert f"P{top['level']}: {sum(d['level'] == top['level'] for d in drawn)}" in legend


def set_slider(page, value: float) -> None:
    page.evaluate("v => { const s = document.getElementById('thresh'); s.value = v; "
                  "s.dispatchEvent(new Event('input')); }", value)


def edge_midpoints(box: list[float], size: tuple[int, int]) -> list[tuple[int, int]]:
    """A pixel wholly inside the 3-px line of each of the four sides, at the side's middle."""
    x1, y1, x2, y2 = box
    xs = (min(int(x1), size[0] - 1), min(int(-(-x2 // 1)) - 1, size[0] - 1))
    ys = (min(int(y1), size[1] - 1), min(int(-(-y2 // 1)) - 1, size[1] - 1))
    cx, cy = int((x1 + x2) / 2), int((y1 + y2) / 2)
    return [(xs[0], cy), (xs[1], cy), (cx, ys[1])]  # the top side may be under the label


def close(pixel, colour, tol: int = 12) -> bool:
    return all(abs(a - b) <= tol for a, b in zip(pixel, colour, strict=True))


def test_serve_user_errors_are_one_line(tmp_path, capsys, monkeypatch):
    assert main(["serve", str(tmp_path / "no_run")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no_run" in err and "Traceback" not in err
    rpn_alone = make_run(tmp_path / "rpn", ("model.box_head=false",))
    assert main(["serve", str(rpn_alone)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "needs a detector with a box head" in err
    monkeypatch.setitem(sys.modules, "uvicorn", None)  # as if the extra were not installed
    assert main(["serve", str(tmp_path)]) == 2
    assert "pip install 'fpn[serve]'" in capsys.readouterr().err


@pytest.mark.slow
def test_several_workers_each_serve(run_dir, tmp_path):
    """``--workers 2``: uvicorn's worker processes build the app from the options in the environment."""
    srv = Server(run_dir, ["--workers", "2", "--threads", "1"], tmp_path / "server.log")
    try:
        srv.wait_ready()
        assert all(detect(srv.url, photo_bytes(seed=i)).status_code == 200 for i in range(4))
        assert "Started parent process" in srv.log.read_text()
    finally:
        srv.stop()


# ---- the queue in-process: a stand-in detector that records its batches ----------------------

class SlowDetector:
    def __init__(self, seconds: float):
        self.seconds, self.batches = seconds, []

    def __call__(self, images):
        self.batches.append(len(images))
        time.sleep(self.seconds)
        return [{"boxes": torch.zeros(0, 4)} for _ in images]


def test_the_batcher_micro_batches_refuses_when_full_and_recovers_from_timeouts():
    from fpn.serve.batcher import Batcher, Busy, TimedOut

    async def scenario():
        detector = SlowDetector(0.2)
        batcher = Batcher(detector, max_batch=4, max_queue=5)
        await batcher.start()
        image = torch.zeros(3, 8, 8, dtype=torch.uint8)
        first = asyncio.create_task(batcher.detect(image, 10))
        await asyncio.sleep(0.05)  # the worker is busy with the first image
        rest = [asyncio.create_task(batcher.detect(image, 10)) for _ in range(5)]
        await asyncio.sleep(0)
        with pytest.raises(Busy):  # 5 queued: the sixth is refused at once
            await batcher.detect(image, 10)
        await asyncio.gather(first, *rest)
        assert detector.batches == [1, 4, 1]  # the queued five in batches of at most four
        with pytest.raises(TimedOut):
            await batcher.detect(image, 0.05)
        assert "boxes" in await batcher.detect(image, 10)  # the next request is served
        await batcher.stop()

    asyncio.run(scenario())


class SleepingDetector:
    """A stand-in model whose forward pass sleeps until released (a hung forward), and returns at once
    otherwise; it records how many forward passes have returned."""

    def __init__(self, sleeps_while: callable):
        self.sleeps_while, self.release, self.returned = sleeps_while, threading.Event(), 0

    def __call__(self, images):
        if any(self.sleeps_while(image) for image in images):
            self.release.wait(120)
        self.returned += 1
        return [{"boxes": torch.zeros(0, 4)} for _ in images]


def test_the_watchdog_replaces_a_hung_worker_and_serves_the_queue():
    """Issue 25, point 7: a forward that never returns must not block the requests behind it."""
    from fpn.serve.batcher import Batcher, Hung, TimedOut

    async def scenario():
        detector = SleepingDetector(lambda image: image.shape[-1] == 77)
        batcher = Batcher(detector, max_batch=1, max_queue=8, hang_seconds=0.5, max_hung=2)
        await batcher.start()
        hanging = asyncio.create_task(batcher.detect(torch.zeros(3, 8, 77, dtype=torch.uint8), 30))
        await asyncio.sleep(0.05)  # the worker is in the hung forward
        start = time.monotonic()
        served = await batcher.detect(torch.zeros(3, 8, 8, dtype=torch.uint8), 10)  # queued behind it
        waited = time.monotonic() - start
        assert "boxes" in served and waited < 8  # without the watchdog: only when the sleeper returns
        with pytest.raises(TimedOut, match="did not answer within 0.5 s"):
            await hanging  # answered by the watchdog, long before its own 30 s
        assert batcher.workers_replaced == 1 and batcher.hung == 1 and batcher.answering
        # a second hung forward: two abandoned threads, so the batcher stops taking work
        second = asyncio.create_task(batcher.detect(torch.zeros(3, 8, 77, dtype=torch.uint8), 30))
        with pytest.raises(TimedOut):
            await second
        assert batcher.hung == 2 and not batcher.answering
        with pytest.raises(Hung, match="not answering"):
            await batcher.detect(torch.zeros(3, 8, 8, dtype=torch.uint8), 10)
        detector.release.set()  # the hung forwards return at last: their results are dropped
        for _ in range(100):
            if batcher.hung == 0:
                break
            await asyncio.sleep(0.05)
        assert batcher.hung == 0 and batcher.answering
        assert "boxes" in await batcher.detect(torch.zeros(3, 8, 8, dtype=torch.uint8), 10)
        await batcher.stop()

    asyncio.run(scenario())


def test_a_hung_model_gets_503_over_http_and_the_next_request_is_served(run_dir):
    """The same through the app: a 503 for the hung request at the hang timeout, a 200 for the
    request behind it, and /health counting the replaced worker."""
    from fastapi.testclient import TestClient

    from fpn.api import Detector
    from fpn.serve.app import ServeSettings, build_app

    detector = Detector.from_checkpoint(run_dir, "cpu")
    sleeper = SleepingDetector(lambda image: image.shape[-1] == 77)
    real_call = detector.__class__.__call__

    class Sleepy(Detector):
        def __call__(self, images, **kwargs):
            sleeper(images)
            return real_call(self, images, **kwargs)

    detector.__class__ = Sleepy
    app = build_app(detector, ServeSettings(timeout=8.0, hang_timeout=1.0, max_batch=1))
    with TestClient(app) as client:
        def post(data):
            return client.post("/detect", files={"image": ("p.png", data, "image/png")})

        results = {}
        hung = threading.Thread(target=lambda: results.setdefault("hung", post(png_bytes(size=(77, 60)))))
        hung.start()
        time.sleep(0.3)
        behind = post(png_bytes(size=(64, 60)))
        hung.join(60)
        assert behind.status_code == 200, behind.text
        assert_one_line_error(results["hung"], 503, "did not answer")
        health = client.get("/health").json()
        assert health["workers_replaced"] == 1 and health["hung"] == 1 and health["status"] == "ok"
        sleeper.release.set()  # the abandoned forward returns: no thread left running at exit
        deadline = time.monotonic() + 60
        while client.get("/health").json()["hung"] and time.monotonic() < deadline:
            time.sleep(0.1)
        assert client.get("/health").json()["hung"] == 0
