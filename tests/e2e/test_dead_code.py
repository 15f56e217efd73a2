"""No code that nothing uses: vulture over the package, with the tests, benchmarks and scripts as
its users. A name vulture cannot see used (a protocol, a hook's parameter, an attribute another
library reads) is listed below with the reason; anything else it finds is dead and must go."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

# name -> why vulture sees it as unused although it is not
USED_ELSEWHERE = {
    "memo": "the parameter of __deepcopy__",
    "tb": "the parameter of __exit__",
    "signum": "the parameter of a signal handler",
    "pix_fmt": "set on a PyAV stream, read by FFmpeg",
    "useCats": "a pycocotools parameter it reads",
    "maxDets": "a pycocotools parameter it reads",
    "intra_op_num_threads": "an ONNX Runtime session option",
    "engine": "torch.backends.quantized.engine, read by PyTorch",
    "train_proposals": "a config field read by name (data.{split}_proposals)",
    "Neck": "a Protocol: the type of what the detector reads from a neck",
    "Precision": "a Literal type alias in signatures",
    "queued": "a field of the /health answer's pydantic model",
    "app_from_environment": "uvicorn's factory, named as a string",
}


def test_no_unused_code():
    pytest.importorskip("vulture")
    found = subprocess.run(
        [sys.executable, "-m", "vulture", "src/fpn", "tests", "benchmarks", "scripts",
         "--min-confidence", "60", "--ignore-names", ",".join(USED_ELSEWHERE)],
        cwd=ROOT, capture_output=True, text=True)
    dead = [line for line in found.stdout.splitlines() if line.startswith("src/")]
    why = "code nothing uses (delete it, or say in USED_ELSEWHERE why it is used):\n"
    assert not dead, why + "\n".join(dead)
