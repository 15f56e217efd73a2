"""``fpn reproduce``: the paper's ablations in miniature, one command (docs/paper.md §4, §5, §7).

Every row of a table is a preset of the paper's (``rpn_*`` for Table 1, ``fast_*`` for Table 2,
``ablation_*``/``paper_r50_fpn`` for Table 3, ``segprop_*`` for Table 6) shrunk by one transform
shared by all rows (``miniature``): a narrow ResNet-18, pyramid and heads a quarter as wide,
anchors, level-mapping scale and mask scales halved with the halved images, and one training
schedule per table. No row gets its own tuning. On top, the featurized image pyramid of Fig. 1(a):
the single-scale C5 detector of Table 3 run on several image scales, against FPN at one.

The rows the paper compares most (FPN against C4 and C5, Tables 1 and 3) are trained with
several seeds. A row is finished when its ``row.json`` exists; a killed run continues with the
rows it had not finished (and a row's training resumes from its last checkpoint). Each run
records the config it was made with (``reproduce_config.json``); a run whose config the code no
longer makes is trained again, with what was derived from it.
"""

from __future__ import annotations

import copy
import json
import os
import platform
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from fpn.config import Config, load_config, to_dict
from fpn.data import synthetic
from fpn.engine.run_folder import holds_a_run
from fpn.jobs.datasets import dataset_for
from fpn.jobs.evaluation import evaluate_model, open_run
from fpn.jobs.proposals import run_proposals
from fpn.jobs.training import run_train


@dataclass(frozen=True)
class Budget:
    """How much data and training every row gets."""

    train_images: int
    val_images: int
    image_size: int
    iters: dict[str, int]  # per table: every row of a table shares its schedule
    seeds: dict[str, int]  # per table, for its compared rows (FPN, C4, C5 of Tables 1 and 3)
    batch_size: int = 4
    # per table, for batch_size images: the detectors' 0.02 (as demo.yaml); segment proposals the
    # paper's own rate, 0.03 per 16 images, scaled linearly (at 0.02 a 7x7 MLP diverged at step 195)
    base_lr: dict[str, float] = field(default_factory=lambda: {"1": 0.02, "2": 0.02, "3": 0.02, "6": 0.0075})
    pyramid_scales: tuple[int, ...] = ()  # shorter sides of the featurized image pyramid


# The detectors of Tables 2 and 3 learn from scratch (no ImageNet here): at 500 iterations their AP
# was still 1-2 points, so they get 1000, and Table 3 two seeds instead of three to stay in budget.
FULL = Budget(train_images=600, val_images=150, image_size=256, seeds={"1": 3, "3": 2},
              iters={"1": 500, "2": 1000, "3": 1000, "6": 500}, pyramid_scales=(128, 181, 256, 362, 512))
QUICK = Budget(train_images=4, val_images=2, image_size=64, seeds={"1": 2, "3": 2},
               iters={"1": 1, "2": 1, "3": 1, "6": 1}, batch_size=2, pyramid_scales=(48, 64, 96))


@dataclass(frozen=True)
class Row:
    """One row of one of the paper's tables."""

    table: str  # "1", "2", "3", "6"
    key: str  # the paper's row letter, or the MLP variant
    label: str
    preset: str
    compared: bool = False  # trained with every seed of the budget

    @property
    def name(self) -> str:
        return f"table{self.table}_{self.key}"


ROWS = [
    Row("1", "a", "(a) C4", "rpn_a_c4", compared=True),
    Row("1", "b", "(b) C5", "rpn_b_c5", compared=True),
    Row("1", "c", "(c) FPN", "rpn_c_fpn", compared=True),
    Row("1", "d", "(d) bottom-up pyramid", "rpn_d_bottom_up"),
    Row("1", "e", "(e) top-down, no lateral", "rpn_e_no_lateral"),
    Row("1", "f", "(f) only P2", "rpn_f_p2_only"),
    Row("2", "a", "(a) C4, conv5 head", "fast_a_c4"),
    Row("2", "b", "(b) C5, 2fc head", "fast_b_c5"),
    Row("2", "c", "(c) FPN", "fast_c_fpn"),
    Row("2", "d", "(d) bottom-up pyramid", "fast_d_bottom_up"),
    Row("2", "e", "(e) top-down, no lateral", "fast_e_no_lateral"),
    Row("2", "f", "(f) only P2", "fast_f_p2_only"),
    Row("3", "a", "(a) C4, conv5 head", "ablation_a_c4", compared=True),
    Row("3", "b", "(b) C5, 2fc head", "ablation_b_c5", compared=True),
    Row("3", "c", "(c) FPN", "paper_r50_fpn", compared=True),
    Row("6", "5x5", "single 5x5 MLP", "segprop_5x5"),
    Row("6", "7x7", "single 7x7 MLP", "segprop_7x7"),
    Row("6", "dual", "5x5 and 7x7 MLPs", "segprop_dual"),
]

# The five levels of the paper's RPN (P2-P6) and the top-k each keeps before NMS in the miniature.
PYRAMID_LEVELS = ("p2", "p3", "p4", "p5", "p6")
PRE_NMS_PER_LEVEL = {"train": 600, "test": 1000}

# The config a row's run was made with, beside it: a run made with another is trained again.
ROW_CONFIG = "reproduce_config.json"

# Table 2's fixed proposals are those of the FPN RPN (Table 1, row c), as in the paper.
PROPOSAL_SOURCE = "table1_c"


def miniature(cfg: Config, budget: Budget, scale: float) -> Config:
    """The paper's preset at CPU size: the same transform for every row.

    ``scale`` is image size / 512: anchors, the level mapper's canonical size and the segment
    proposals' object scales shrink with the images, so a row sees objects as the paper's did.
    """
    cfg = copy.deepcopy(cfg)
    m = cfg.model
    m.backbone.depth, m.backbone.width, m.backbone.norm, m.backbone.freeze_at = 18, 16, "bn", 0
    m.neck.channels //= 4
    m.rpn.anchors.sizes = {level: [s * scale for s in sizes] for level, sizes in m.rpn.anchors.sizes.items()}
    m.rpn.batch_size_per_image = 128
    # The pre-NMS top-k is per level; every row gets the same number of candidates per image as
    # the five-level FPN, so a one-level RPN (C4, C5, P2 only) is not starved of them.
    per_level = len(PYRAMID_LEVELS) / len(m.rpn.levels)
    m.rpn.pre_nms_top_n_train = round(PRE_NMS_PER_LEVEL["train"] * per_level)
    m.rpn.pre_nms_top_n_test = round(PRE_NMS_PER_LEVEL["test"] * per_level)
    m.rpn.post_nms_top_n_train, m.rpn.post_nms_top_n_test = 500, 1000
    m.roi_heads.fc_dim //= 4
    m.roi_heads.batch_size_per_image = 64
    m.roi_heads.sampling_ratio = 1
    m.roi_heads.canonical_scale *= scale
    m.segment_proposals.hidden_channels //= 8
    m.segment_proposals.object_scales = {k: v * scale for k, v in m.segment_proposals.object_scales.items()}
    m.input.min_size_train, m.input.min_size_test = [budget.image_size], budget.image_size
    m.input.max_size = budget.image_size
    return cfg


@dataclass
class Reproduction:
    """The rows of a reproduction in ``out_dir``: what is done, what is left, and running them."""

    out_dir: Path
    budget: Budget
    seeds: dict[str, int]  # per table, for its compared rows
    device: str = "auto"
    progress: Callable[[str], None] = print
    started: float = field(default_factory=time.perf_counter)
    trained: int = 0  # training runs made by this invocation

    @property
    def data_dir(self) -> Path:
        return self.out_dir / "data"

    def runs(self) -> Iterator[tuple[Row, int]]:
        """(row, seed) in the order they run: Table 1 first (Table 2 needs its FPN row's proposals)."""
        for row in ROWS:
            for seed in range(self.seeds.get(row.table, 1) if row.compared else 1):
                yield row, seed

    def run_dir(self, row: Row, seed: int) -> Path:
        return self.out_dir / "runs" / f"{row.name}_seed{seed}"

    def config(self, row: Row, seed: int) -> Config:
        base = load_config(row.preset)
        cfg = miniature(base, self.budget, self.budget.image_size / 512)
        data, train = cfg.data, cfg.train
        data.train_images, data.train_annotations = str(self.data_dir / "train" / "images"), str(
            self.data_dir / "train" / "annotations.json")
        data.val_images, data.val_annotations = str(self.data_dir / "val" / "images"), str(
            self.data_dir / "val" / "annotations.json")
        data.num_workers = 1
        if row.table == "2":
            source = self.run_dir(_row(PROPOSAL_SOURCE), 0)
            data.train_proposals = str(source / "train.proposals")
            data.val_proposals = str(source / "val.proposals")
        iters = self.budget.iters[row.table]
        train.batch_size = train.base_batch_size = self.budget.batch_size
        train.base_lr = self.budget.base_lr[row.table]
        train.max_iter, train.warmup_iters = iters, min(100, iters // 5)
        train.lr_steps = [int(iters * 0.85), int(iters * 0.95)]
        train.checkpoint_period, train.log_period, train.eval_period = max(1, iters // 2), 20, 0
        train.seed, train.device, train.init = seed, self.device, []
        return cfg

    def run(self) -> dict[str, Any]:
        """Every row not yet finished, then the image pyramid; the results of all rows."""
        self.out_dir.mkdir(parents=True, exist_ok=True)
        if not (self.data_dir / "val" / "annotations.json").is_file():
            self.progress(f"generating the synthetic benchmark in {self.data_dir}")
            synthetic.generate(self.data_dir, num_train=self.budget.train_images,
                               num_val=self.budget.val_images, image_size=self.budget.image_size, seed=0,
                               progress=False)
        todo = list(self.runs())
        discarded = [(row, seed) for row, seed in todo if self._discard_if_stale(row, seed)]
        if discarded:  # what was made from a discarded run goes with it
            (self.out_dir / "pyramid.json").unlink(missing_ok=True)
        if (_row(PROPOSAL_SOURCE), 0) in discarded:
            for row, seed in todo:
                if row.table == "2" and self.run_dir(row, seed).is_dir():
                    shutil.rmtree(self.run_dir(row, seed))
        for index, (row, seed) in enumerate(todo, start=1):
            if not (self.run_dir(row, seed) / "row.json").is_file():
                self._run_row(row, seed, index, todo)
        pyramid = self._image_pyramid()
        return {"rows": self.results(), "pyramid": pyramid}

    def _discard_if_stale(self, row: Row, seed: int) -> bool:
        """Delete a row's run if it was made with another config (the code or the budget changed)."""
        run_dir = self.run_dir(row, seed)
        if not run_dir.is_dir():
            return False
        recorded = run_dir / ROW_CONFIG
        if recorded.is_file() and recorded.read_text() == self._config_text(row, seed):
            return False
        self.progress(f"{run_dir} was trained with another config; training it again")
        shutil.rmtree(run_dir)
        return True

    def _config_text(self, row: Row, seed: int) -> str:
        return json.dumps(to_dict(self.config(row, seed)), sort_keys=True)

    def _run_row(self, row: Row, seed: int, index: int, todo: list[tuple[Row, int]]) -> None:
        run_dir = self.run_dir(row, seed)
        start = time.perf_counter()
        if not run_dir.is_dir():
            run_dir.mkdir(parents=True)
            (run_dir / ROW_CONFIG).write_text(self._config_text(row, seed))
        result = run_train(self.config(row, seed), run_dir, resume=holds_a_run(run_dir), progress=False)
        train_seconds = result["seconds"]
        if row.name == PROPOSAL_SOURCE and seed == 0:
            for split in ("train", "val"):
                run_proposals(run_dir, split, run_dir / f"{split}.proposals", [], progress=False)
        numbers = {k: v for k, v in result["metrics"].items() if isinstance(v, int | float)}
        record = {"table": row.table, "row": row.key, "label": row.label, "preset": row.preset, "seed": seed,
                  "train_seconds": train_seconds, "seconds": time.perf_counter() - start, "metrics": numbers}
        (run_dir / "row.json").write_text(json.dumps(record, indent=1))
        self.trained += 1
        self.progress(self._progress_line(row, seed, index, todo, record))

    def _progress_line(self, row: Row, seed: int, index: int, todo: list[tuple[Row, int]],
                       record: dict[str, Any]) -> str:
        done = [json.loads((self.run_dir(r, s) / "row.json").read_text()) for r, s in todo
                if (self.run_dir(r, s) / "row.json").is_file()]
        per_table = {}
        for item in done:
            per_table.setdefault(item["table"], []).append(item["seconds"])
        iters = self.budget.iters
        per_iteration = sum(item["seconds"] for item in done) / sum(iters[item["table"]] for item in done)
        left = sum(_mean(per_table.get(r.table, [])) or per_iteration * iters[r.table] for r, s in todo
                   if not (self.run_dir(r, s) / "row.json").is_file())
        headline = _headline(record["metrics"])
        return (f"[{index}/{len(todo)}] table {row.table} {row.label} seed {seed}: {headline} "
                f"({record['seconds'] / 60:.1f} min); about {left / 60:.0f} min left")

    def _image_pyramid(self) -> dict[str, Any]:
        """Fig. 1(a): Table 3's single-scale C5 detector on an image pyramid, against FPN at one scale."""
        path = self.out_dir / "pyramid.json"
        if path.is_file():
            return json.loads(path.read_text())
        scales = list(self.budget.pyramid_scales)
        c5, fpn = self.run_dir(_row("table3_b"), 0), self.run_dir(_row("table3_c"), 0)
        rows = {}
        start = time.perf_counter()
        for name, run, overrides in (
                ("C5, one scale", c5, []),
                (f"C5, image pyramid {scales}", c5, [f"model.input.test_scales={scales}",
                                                      f"model.input.max_size={max(scales)}"]),
                ("FPN, one scale", fpn, [])):
            cfg, detector, _ = open_run(run, [f"train.device={self.device}", *overrides])
            evaluation = evaluate_model(detector.model, dataset_for(cfg, "val"), cfg, progress=False)
            rows[name] = evaluation.numbers()
        result = {"scales": scales, "rows": rows, "seconds": time.perf_counter() - start}
        path.write_text(json.dumps(result, indent=1))
        aps = ", ".join(f"{name}: AP {metrics['AP']:.3f}" for name, metrics in rows.items())
        self.progress(f"image pyramid: {aps}")
        return result

    def results(self) -> list[dict[str, Any]]:
        return [json.loads((self.run_dir(r, s) / "row.json").read_text()) for r, s in self.runs()]


def _row(name: str) -> Row:
    return next(row for row in ROWS if row.name == name)


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else 0.0


def _headline(metrics: dict[str, float]) -> str:
    for key in ("AP", "mask_AR@1000", "AR@1000"):
        if key in metrics:
            return f"{key} {metrics[key]:.3f}"
    return "-"


def machine() -> str:
    """The machine a report was measured on, in one line."""
    cpu = platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        names = [line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines()
                 if line.startswith("model name")]
        cpu = names[0] if names else cpu
    return (f"{cpu} ({os.cpu_count()} cores, {torch.get_num_threads()} torch threads), "
            f"torch {torch.__version__}, Python {platform.python_version()}, {time.strftime('%Y-%m-%d')}")


def run_reproduction(*, quick: bool = False, seeds: int | None = None,
                     output: str | Path = "reports/reproduction", work: str | Path = "runs/reproduction",
                     device: str = "auto", progress: Callable[[str], None] = print) -> Path:
    """Train and evaluate every row (continuing a killed run in ``work``), then write the report."""
    from fpn.jobs.reproduction_report import write_report

    budget = QUICK if quick else FULL
    if seeds is not None and seeds < 1:
        raise ValueError(f"--seeds must be at least 1, got {seeds}")
    seeds_per_table = budget.seeds if seeds is None else {table: seeds for table in budget.seeds}
    work = Path(work) / ("quick" if quick else "full")
    reproduction = Reproduction(work, budget, seeds_per_table, device, progress)
    count = len(list(reproduction.runs()))
    described = ", ".join(f"Table {table}: {n}" for table, n in seeds_per_table.items())
    progress(f"reproducing the paper in miniature: {count} training runs in {work} "
             f"({'quick' if quick else 'full'} budget; seeds of the compared rows: {described})")
    start = time.perf_counter()
    result = reproduction.run()
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    command = ("fpn reproduce" + (" --quick" if quick else "")
               + (f" --seeds {seeds}" if seeds is not None else ""))
    # A resumed run's wall clock misses the rows an earlier invocation finished: the report gives
    # the work of every row and of the image pyramid, summed, and this invocation's time beside it.
    this_invocation = time.perf_counter() - start
    compute = sum(r["seconds"] for r in result["rows"]) + result["pyramid"].get("seconds", 0.0)
    last = (f"the last invocation trained {reproduction.trained} of them in {this_invocation / 60:.0f} min"
            if reproduction.trained else "the last invocation only wrote this report")
    path = write_report(result, output, command=command, wall_seconds=compute,
                        machine=machine(), budget={"train_images": budget.train_images,
                                                   "val_images": budget.val_images,
                                                   "image_size": budget.image_size, "iters": budget.iters,
                                                   "seeds": seeds_per_table, "base_lr": budget.base_lr,
                                                   "batch_size": budget.batch_size},
                        notes=f"The time is the sum over the {len(result['rows'])} training runs (each with "
                              "its evaluation) and the image pyramid's evaluation, including work an "
                              f"earlier, interrupted invocation finished; {last}.")
    progress(f"wrote {path}")
    return path
