"""Where a training step spends its time: torch.profiler by op, and forward/backward/optimizer.

    python benchmarks/profile_train.py [--setting r50_512|demo] [--rows 25]
"""

from __future__ import annotations

import argparse
import time

from torch.profiler import ProfilerActivity, profile, record_function

from fpn.bench.training import optimizer_for, setting
from fpn.model.detector import FasterRCNN


def phases(model, optimizer, batch) -> dict[str, float]:
    images, targets = batch
    times = {}
    start = time.perf_counter()
    with record_function("phase:forward"):
        losses = model(images, [dict(t) for t in targets])
        total = sum(losses.values())
    times["forward"] = time.perf_counter() - start
    start = time.perf_counter()
    optimizer.zero_grad(set_to_none=True)
    with record_function("phase:backward"):
        total.backward()
    times["backward"] = time.perf_counter() - start
    start = time.perf_counter()
    with record_function("phase:optimizer"):
        optimizer.step()
    times["optimizer"] = time.perf_counter() - start
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--setting", choices=["r50_512", "demo"], default="r50_512")
    parser.add_argument("--rows", type=int, default=25)
    parser.add_argument("--plain", action="store_true", help="training speed paths off")
    args = parser.parse_args()
    build, batch, size = setting(args.setting)
    model = build()
    if args.plain:  # the same weights, built without the speed paths
        plain = FasterRCNN(model.cfg, fast_training=False)
        plain.load_state_dict(model.state_dict())
        model = plain.train()
    optimizer = optimizer_for(model, size)
    phases(model, optimizer, batch)  # warm-up
    print(phases(model, optimizer, batch))
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        times = phases(model, optimizer, batch)
    print(times)
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.rows))


if __name__ == "__main__":
    main()
