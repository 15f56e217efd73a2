"""Start-up time and memory of the COCO loader on a generated 100k-image annotation file.

    python benchmarks/big_coco.py [--images 100000] [--per-image 7]

pycocotools' own COCO() loading the same file is measured in the same run as the reference.
No image is decoded: the loader only indexes annotations at start-up.
"""

from __future__ import annotations

import argparse
import gc
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from fpn.bench.common import PeakRSS, markdown_table, rss_mib


def write_annotations(path: Path, num_images: int, per_image: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    images = [{"id": i + 1, "file_name": f"{i:012d}.jpg", "height": 480, "width": 640}
              for i in range(num_images)]
    annotations = []
    for image_id in range(1, num_images + 1):
        for _ in range(per_image):
            w, h = rng.uniform(4, 140, 2).round(1).tolist()  # inside the 640 x 480 image
            x, y = round(float(rng.uniform(0, 640 - w)), 1), round(float(rng.uniform(0, 480 - h)), 1)
            polygon = [x, y, x + w, y, x + w, y + h, x, y + h]
            annotations.append({"id": len(annotations) + 1, "image_id": image_id,
                                "category_id": int(rng.integers(1, 91)), "bbox": [x, y, w, h],
                                "area": w * h, "iscrowd": 0, "segmentation": [polygon]})
    categories = [{"id": i, "name": f"c{i}"} for i in range(1, 91)]
    path.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))


def measure(load) -> tuple[float, float, float, object]:
    gc.collect()
    before = rss_mib()
    with PeakRSS() as mem:
        start = time.perf_counter()
        obj = load()
        seconds = time.perf_counter() - start
    gc.collect()
    return seconds, mem.peak - before, rss_mib() - before, obj


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--images", type=int, default=100_000)
    parser.add_argument("--per-image", type=int, default=7)
    args = parser.parse_args()
    from pycocotools.coco import COCO

    from fpn.data.coco import CocoDetection

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "big.json"
        write_annotations(path, args.images, args.per_image)
        size_mib = path.stat().st_size / 2**20
        rows = []
        seconds, peak, kept, dataset = measure(lambda: CocoDetection(tmp, path))
        rows.append(["fpn CocoDetection", f"{seconds:.1f}", f"{peak:.0f}", f"{kept:.0f}"])
        assert len(dataset) == args.images
        del dataset
        seconds, peak, kept, coco = measure(lambda: COCO(str(path)))
        rows.append(["pycocotools COCO (reference)", f"{seconds:.1f}", f"{peak:.0f}", f"{kept:.0f}"])
        del coco
    print(f"{args.images} images, {args.images * args.per_image} annotations, JSON {size_mib:.0f} MiB\n")
    print(markdown_table(["loader", "start-up s", "peak MiB", "kept after start-up MiB"], rows))


if __name__ == "__main__":
    main()
