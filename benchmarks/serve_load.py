"""Load on ``fpn serve``: N requests from C concurrent clients on loopback; throughput, latency,
the server's peak memory and the error count, for micro-batches of 1 and of 4 images.

    python benchmarks/serve_load.py [--requests 200 --clients 8 --output reports/serve.md]
    python benchmarks/serve_load.py --run runs/demo     # a trained run instead of random weights

Without ``--run``, the demo preset (ResNet-18 at quarter width, d = 64, 256-px input) with random
weights is saved as a run in a temporary folder. Every client sends 640x480 JPEGs, one request at a
time, over one keep-alive connection. Peak memory is the server process's VmHWM (Linux).
"""

from __future__ import annotations

import argparse
import io
import os
import platform
import shlex
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

import httpx
import torch
from PIL import Image

from fpn.bench.common import markdown_table, publish_report


def make_run(root: Path) -> Path:
    from fpn.config.files import load_config
    from fpn.config.schema import Config, to_dict
    from fpn.engine.checkpoint import save_checkpoint
    from fpn.model.detector import FasterRCNN

    torch.manual_seed(0)
    model = FasterRCNN(load_config("demo").model)
    save_checkpoint(root / "checkpoints", 0, model.state_dict(), None, to_dict(Config(model=model.cfg)))
    return root


def jpeg(seed: int, size=(640, 480)) -> bytes:
    generator = torch.Generator().manual_seed(seed)
    blocks = (torch.rand(3, size[1] // 40, size[0] // 40, generator=generator) * 255).to(torch.uint8)
    pixels = blocks.repeat_interleave(40, 1).repeat_interleave(40, 2).permute(1, 2, 0).numpy()
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def proc_status_mib(pid: int, field: str) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def start_server(run: Path, extra: list[str]) -> tuple[subprocess.Popen, str]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    process = subprocess.Popen([sys.executable, "-m", "fpn", "serve", str(run), "--port", str(port), *extra],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    for _ in range(600):
        if process.poll() is not None:
            raise RuntimeError(f"the server exited with status {process.returncode}")
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return process, url
        except httpx.HTTPError:
            time.sleep(0.5)
    process.kill()
    raise TimeoutError("the server did not start")


def load(url: str, images: list[bytes], requests: int, clients: int) -> dict:
    """``requests`` POSTs spread over ``clients`` threads; latencies and failures."""
    latencies, errors = [], []
    lock = threading.Lock()

    def client(indices: range) -> None:
        with httpx.Client(timeout=120) as session:
            for i in indices:
                upload = {"image": ("p.jpg", images[i % len(images)], "image/jpeg")}
                start = time.perf_counter()
                try:
                    reply = session.post(f"{url}/detect", files=upload)
                    error = None if reply.status_code == 200 else f"{reply.status_code} {reply.text}"
                except httpx.HTTPError as err:
                    error = repr(err)
                seconds = time.perf_counter() - start
                with lock:
                    if error is None:
                        latencies.append(seconds)
                    else:
                        errors.append(error)

    threads = [threading.Thread(target=client, args=(range(c, requests, clients),)) for c in range(clients)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return {"wall": time.perf_counter() - start, "latencies": sorted(latencies), "errors": errors}


def measure(run: Path, max_batch: int, args: argparse.Namespace, images: list[bytes]) -> list[str]:
    process, url = start_server(run, ["--max-batch", str(max_batch), *args.server_args])
    try:
        for image in images[:2]:  # warm-up
            httpx.post(f"{url}/detect", files={"image": ("p.jpg", image, "image/jpeg")}, timeout=120)
        idle = proc_status_mib(process.pid, "VmRSS")
        result = load(url, images, args.requests, args.clients)
        peak = proc_status_mib(process.pid, "VmHWM")
        health = httpx.get(f"{url}/health").json()
    finally:
        process.terminate()
        process.wait(timeout=30)
    lat = result["latencies"]
    p99 = lat[min(len(lat) - 1, int(0.99 * len(lat)))] if lat else float("nan")
    if result["errors"]:
        print(f"max_batch {max_batch}: {len(result['errors'])} errors, first: {result['errors'][0]}")
    mean_batch = (health["images_run"] - 2) / max(health["batches_run"] - 2, 1)
    return [str(max_batch), f"{args.requests / result['wall']:.2f}", f"{statistics.median(lat):.3f}",
            f"{p99:.3f}", f"{mean_batch:.2f}", f"{idle:.0f}", f"{peak:.0f}", str(len(result["errors"]))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, default=None,
                        help="a run to serve (default: the demo preset, random weights)")
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 4],
                        help="--max-batch values to measure")
    parser.add_argument("--output", type=Path, default=None, help="also write the Markdown report here")
    parser.add_argument("--note", default="",
                        help="a sentence on the conditions (e.g. other work on the cores)")
    parser.add_argument("server_args", nargs="*", help="more fpn serve options, after --")
    args = parser.parse_args()
    images = [jpeg(seed) for seed in range(16)]
    with tempfile.TemporaryDirectory() as tmp:
        run = args.run or make_run(Path(tmp) / "run")
        rows = [measure(run, batch, args, images) for batch in args.batches]
    command = "python benchmarks/serve_load.py " + shlex.join(sys.argv[1:])
    report = "\n".join([
        "# fpn serve under load",
        "",
        f"`{command.strip()}`, {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC: {args.requests} requests "
        f"from {args.clients} concurrent clients (threads, one keep-alive connection each) to one server "
        "process on loopback, 640x480 JPEGs; "
        + (f"run `{args.run}`" if args.run else "the `demo` preset with random weights (256-px input)")
        + f". Machine: {os.cpu_count()} CPU cores ({platform.processor() or platform.machine()}), "
        f"torch {torch.__version__} with its default threads, Python {platform.python_version()}."
        + (f" {args.note}" if args.note else ""),
        "",
        "Latency is per request as a client sees it (upload, queue, model, answer). Peak MiB is the server "
        "process's peak resident memory (VmHWM) over its life, idle MiB its memory after two warm-up "
        "requests. Mean batch is the images per forward pass the queue formed.",
        "",
        markdown_table(["max batch", "requests/s", "p50 s", "p99 s", "mean batch", "idle MiB", "peak MiB",
                        "errors"], rows),
    ])
    publish_report(report, args.output)


if __name__ == "__main__":
    main()
