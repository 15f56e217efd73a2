"""``fpn reproduce``: the paper's ablations in miniature, one command (docs/paper.md §4, §5, §7).

The study, in the order it runs (each step cached in the work directory, so a killed run
continues where it stopped and a finished row is never trained again):

1. the benchmark (``fpn synth --variant context``, seed ``--data-seed``): train, val and a
   pre-training split drawn from three disjoint random streams;
2. the backbone, pre-trained once as a classifier of crops of the pre-training split
   (``fpn pretrain``); its held-out accuracy goes into the report;
3. every row of ``fpn.reproduction.plan.ROWS``, each seed of its table (paired: seed k gives every
   row of a table the same heads' initialisation, data order and flips), from that backbone; a
   run whose loss becomes NaN at the table's learning rate is recorded as diverged (a result of
   that row, reported and not retried), and the study goes on;
   Table 2 reads the proposals of Table 1's FPN RPN (seed 0), as the paper's Table 2 does;
4. the featurized image pyramid (Fig. 1a): Table 3's C5 detector on several image scales.

Each run records the config it was made with (``reproduce_config.json``). Finished work whose
config the code no longer makes (a changed budget or default) is never deleted: the study stops
with a ``StaleRunError`` naming the runs and the fields that differ, and ``--retrain-stale`` moves
them, with what was derived from them, to ``WORK/stale/<time>/`` and trains them again. Fields
added to the config since a run was made count as their defaults, renamed ones under their new
names, so neither makes a run stale.

``--jobs N`` trains N runs at once in separate processes, each with cores/N threads (small
miniature layers use two threads poorly: on 2 cores two one-thread runs do about 1.45x the work of
one two-thread run); Table 2's rows wait for the proposals of Table 1's FPN.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import re
import shutil
import time
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from fpn.config.diff import differences
from fpn.config.files import load_config
from fpn.config.overrides import from_dict, upgrade_renamed
from fpn.config.schema import Config, to_dict
from fpn.data import synthetic
from fpn.engine.metrics_log import read_metrics
from fpn.engine.run_folder import holds_a_run
from fpn.errors import ConfigError, NonFiniteLossError, StaleRunError
from fpn.hardware import machine_summary
from fpn.jobs.datasets import dataset_for
from fpn.jobs.evaluation import evaluate_model, open_run
from fpn.jobs.pretraining import RESULT as PRETRAIN_RESULT
from fpn.jobs.pretraining import run_pretrain
from fpn.jobs.proposals import run_proposals
from fpn.jobs.training import run_train
from fpn.reproduction.geometry import annotated_boxes, geometry_tables, reference_boxes
from fpn.reproduction.plan import FULL, QUICK, ROWS, Budget, Row, miniature, pretraining_config, row_named

# The config a run was made with, beside it: a run made with another is trained again.
ROW_CONFIG = "reproduce_config.json"

# Table 2's fixed proposals are those of the FPN RPN (Table 1, row c, seed 0), as in the paper.
PROPOSAL_SOURCE = "table1_c"


@dataclass
class Reproduction:
    """The runs of a reproduction in ``out_dir``: what is done, what is left, and running them.

    ``only`` restricts the rows run (by name, ``table2_c``); the rows they need (Table 1's FPN for
    Table 2's proposals) are run too.
    """

    out_dir: Path
    budget: Budget
    device: str = "auto"
    progress: Callable[[str], None] = print
    only: tuple[str, ...] = ()
    retrain_stale: bool = False  # move stale runs aside and train them again (else: StaleRunError)
    jobs: int = 1  # runs trained at once, each in its own process
    started: float = field(default_factory=time.perf_counter)
    trained: int = 0  # training runs made by this invocation

    @property
    def data_dir(self) -> Path:
        return self.out_dir / "data"

    @property
    def pretrain_dir(self) -> Path:
        return self.out_dir / "pretrain"

    def split_paths(self, split: str) -> tuple[str, str]:
        """(images folder, annotations file) of one split of the benchmark."""
        return str(self.data_dir / split / "images"), str(self.data_dir / split / "annotations.json")

    def geometry(self) -> dict[str, Any]:
        """Anchor coverage and level shares of every row of Tables 1-3 on the validation boxes, beside
        the paper's geometry on real COCO boxes (``fpn.reproduction.geometry``), written once to
        ``geometry.json``: no training needed, so the study states it before its first run."""
        path = self.out_dir / "geometry.json"
        if path.is_file():
            return json.loads(path.read_text())
        rows = [row for row in ROWS if row.table in "123"]
        tables = geometry_tables({row.name: self.config(row, 0).model for row in rows},
                                 annotated_boxes(self.split_paths("val")[1]),
                                 presets={row.name: row.preset for row in rows}, reference=reference_boxes())
        path.write_text(json.dumps(tables, indent=1))
        return tables

    def runs(self) -> Iterator[tuple[Row, int]]:
        """(row, seed) in the order they run: Table 1 first (Table 2 needs its FPN row's proposals)."""
        wanted = set(self.only)
        if any(name.startswith("table2_") for name in wanted):
            wanted.add(PROPOSAL_SOURCE)
        for row in ROWS:
            if wanted and row.name not in wanted:
                continue
            for seed in range(self.budget.seeds.get(row.table, 1)):
                if wanted and row.name == PROPOSAL_SOURCE and seed > 0 and row.name not in self.only:
                    continue  # only needed for its proposals
                yield row, seed

    def run_dir(self, row: Row, seed: int) -> Path:
        return self.out_dir / "runs" / f"{row.name}_seed{seed}"

    def config(self, row: Row, seed: int, *, base_lr: float | None = None) -> Config:
        """The row's config: its preset, the miniature transform, the table's schedule, the seed."""
        cfg = miniature(load_config(row.preset), self.budget.image_size, self.budget.geometry)
        data, train = cfg.data, cfg.train
        data.train_images, data.train_annotations = self.split_paths("train")
        data.val_images, data.val_annotations = self.split_paths("val")
        data.num_workers = self.budget.data_workers
        if row.table == "2":
            source = self.run_dir(row_named(PROPOSAL_SOURCE), 0)
            data.train_proposals = str(source / "train.proposals")
            data.val_proposals = str(source / "val.proposals")
        iters = self.budget.iters[row.table]
        train.batch_size = train.base_batch_size = self.budget.batch_size
        train.base_lr = self.budget.base_lr[row.table] if base_lr is None else base_lr
        train.max_iter, train.warmup_iters = iters, min(100, iters // 5)
        train.lr_steps = [int(iters * 0.85), int(iters * 0.95)]
        train.checkpoint_period, train.log_period = max(1, iters // 2), 20
        train.eval_period = self.budget.eval_every.get(row.table, 0)
        train.seed, train.device, train.init = seed, self.device, [str(self.pretrain_dir)]
        return cfg

    def run(self) -> dict[str, Any]:
        """The data, the pre-trained backbone, every row not yet finished, then the image pyramid."""
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.prepare_data()
        self.progress(_coverage_line(self.geometry()["rows"]["table1_c"]))
        todo = list(self.runs())
        self.set_aside(self.stale(todo))
        self.pretrain()
        self.train(todo)
        if not self.only:
            self._image_pyramid()
        return self.recorded()

    def finished(self) -> dict[str, Any]:
        """``recorded`` without training or moving anything (``--report-only``). Stale finished
        work stops it as it stops the study (``set_aside``)."""
        if not self.data_dir.is_dir():
            raise ConfigError(f"{self.out_dir} holds no study yet: "
                              "run fpn reproduce without --report-only first")
        self.set_aside(self.stale(list(self.runs())))
        return self.recorded()

    def recorded(self) -> dict[str, Any]:
        """What the work directory holds: the finished runs, and the records of the pre-training and
        (for the whole study) the image pyramid, where they exist."""
        pretrained = self.pretrain_dir / PRETRAIN_RESULT
        pyramid = self.out_dir / "pyramid.json"
        return {"rows": self.results(),
                "pyramid": json.loads(pyramid.read_text()) if pyramid.is_file() and not self.only else {},
                "pretraining": json.loads(pretrained.read_text()) if pretrained.is_file() else {}}

    def all_runs(self) -> Iterator[tuple[Row, int]]:
        for row in ROWS:
            for seed in range(self.budget.seeds.get(row.table, 1)):
                yield row, seed

    def prepare_data(self) -> None:
        """The benchmark's train, val and pre-training splits, unless already written."""
        if (self.data_dir / "pretrain" / "annotations.json").is_file():
            return
        self.progress(f"generating the {self.budget.variant} benchmark, {self.budget.geometry} geometry "
                      f"(data seed {self.budget.data_seed}) in {self.data_dir}")
        synthetic.generate(self.data_dir, num_train=self.budget.train_images, num_val=self.budget.val_images,
                           num_pretrain=self.budget.pretrain_images,
                           num_calibration=self.budget.calibration_images, image_size=self.budget.image_size,
                           seed=self.budget.data_seed, variant=self.budget.variant,
                           geometry=self.budget.geometry, progress=False)

    def pretraining_config(self) -> Config:
        cfg = pretraining_config(self.budget.image_size, self.budget)
        cfg.data.train_images, cfg.data.train_annotations = self.split_paths("pretrain")
        cfg.data.num_workers, cfg.train.device = self.budget.data_workers, self.device
        return cfg

    def pretrain(self) -> None:
        """The pre-trained backbone every row starts from: trained once (its record in
        ``PRETRAIN_RESULT``), then read from its run."""
        cfg = self.pretraining_config()
        result_file, recorded = self.pretrain_dir / PRETRAIN_RESULT, self.pretrain_dir / ROW_CONFIG
        if result_file.is_file() and not recorded_differences(self.pretrain_dir, cfg):
            return
        if self.pretrain_dir.exists():  # a pre-training killed before it finished (stale ones are set aside)
            self.progress(f"{self.pretrain_dir} holds an unfinished pre-training; pre-training again")
            shutil.rmtree(self.pretrain_dir)
        self.progress(f"pre-training the backbone on crops of {self.budget.pretrain_images} images "
                      f"({cfg.pretrain.iters} steps of {cfg.pretrain.batch_size})")
        self.pretrain_dir.mkdir(parents=True)
        recorded.write_text(config_text(cfg))
        result = run_pretrain(cfg, self.pretrain_dir, progress=False)
        held = result["held_out"]
        self.progress(f"pre-trained in {result['seconds'] / 60:.1f} min: held-out accuracy "
                      f"{held.get('accuracy', float('nan')):.3f} "
                      f"(majority class {held.get('majority', 0):.3f})")

    def stale(self, todo: list[tuple[Row, int]]) -> dict[Path, list[str]]:
        """Finished or started work made with another config than the code makes now, and what
        was derived from it: ``{path: why}``. A stale pre-training makes every run and
        calibration run stale; Table 1's FPN makes Table 2 (its proposals); Table 3's seed-0 runs
        make the image pyramid."""
        why: dict[Path, list[str]] = {}
        if (self.pretrain_dir / PRETRAIN_RESULT).is_file():
            differences = recorded_differences(self.pretrain_dir, self.pretraining_config())
            if differences:
                why[self.pretrain_dir] = differences
                for derived in (self.out_dir / "runs", self.out_dir / "calibration"):
                    if derived.is_dir():
                        why[derived] = [f"started from the stale {self.pretrain_dir.name}"]
                return why
        for row, seed in todo:
            if self.run_dir(row, seed).is_dir():
                differences = recorded_differences(self.run_dir(row, seed), self.config(row, seed))
                if differences:
                    why[self.run_dir(row, seed)] = differences
        source = self.run_dir(row_named(PROPOSAL_SOURCE), 0)
        if source in why:
            for row, seed in self.all_runs():
                if row.table == "2" and self.run_dir(row, seed).is_dir():
                    reason = f"read the proposals of the stale {source.name}"
                    why.setdefault(self.run_dir(row, seed), [reason])
        if any(path.name in ("table3_b_seed0", "table3_c_seed0") for path in why):
            if (self.out_dir / "pyramid.json").is_file():
                why[self.out_dir / "pyramid.json"] = ["evaluated stale Table 3 runs"]
        return why

    def set_aside(self, why: dict[Path, list[str]]) -> None:
        """Stale work (``stale``): a ``StaleRunError`` naming it, or with ``retrain_stale`` moved
        to ``out_dir/stale/<time>/`` (to be trained again). Never deleted."""
        if not why:
            return
        first, reasons = next(iter(why.items()))
        detail = "; ".join(reasons[:3]) + (f"; {len(reasons) - 3} more fields" if len(reasons) > 3 else "")
        if not self.retrain_stale:
            others = f" and {len(why) - 1} more" if len(why) > 1 else ""
            raise StaleRunError(
                f"{first}{others} were made with another config than the code makes now ({detail}); "
                f"rerun with --retrain-stale to move them to {self.out_dir / 'stale'} and train them "
                "again, or use another --work")
        destination = self.out_dir / "stale" / time.strftime("%Y%m%d-%H%M%S")
        for path, reasons in why.items():
            target = destination / path.relative_to(self.out_dir)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(str(path), str(target))
            self.progress(f"{path} was made with another config ({'; '.join(reasons[:3])}); "
                          f"moved to {target}, training it again")

    def ensure(self, row: Row, seed: int) -> None:
        """Train one run unless it is finished with the config the code makes now."""
        self.set_aside(self.stale([(row, seed)]))
        self.train([(row, seed)])

    def train(self, todo: list[tuple[Row, int]]) -> None:
        """Every run of ``todo`` not yet finished, ``jobs`` at a time; Table 2's wait for the
        proposals of Table 1's FPN (seed 0)."""
        left = [(row, seed) for row, seed in todo if not (self.run_dir(row, seed) / "row.json").is_file()]
        if self.jobs <= 1 or len(left) <= 1:
            for row, seed in left:
                self._finished(row, seed, self.train_one(row, seed), todo)
            return
        source = (row_named(PROPOSAL_SOURCE), 0)
        waiting = [run for run in left if run[0].table == "2" and source in left]
        queue = [run for run in left if run not in waiting]
        threads = max(1, (os.cpu_count() or 1) // self.jobs)
        self.progress(f"training {len(left)} runs, {self.jobs} at a time "
                      f"({threads} thread{'s' if threads > 1 else ''} each)")
        # spawn, not fork: a forked copy of a process that has run OpenMP threads can hang
        pool = ProcessPoolExecutor(self.jobs, mp_context=multiprocessing.get_context("spawn"))
        running: dict[Future, tuple[Row, int]] = {}
        portable = replace(self, progress=_quiet)  # what a worker needs, without an unpicklable callback
        try:
            while queue or running:
                while queue and len(running) < self.jobs:
                    row, seed = queue.pop(0)
                    running[pool.submit(_train_in_worker, portable, row.name, seed, threads)] = (row, seed)
                if not running:  # only Table 2 is left, and its proposals are not there
                    raise RuntimeError(f"{source[0].name} seed 0 did not finish; Table 2 cannot start")
                done, _ = wait(running, return_when=FIRST_COMPLETED)
                for future in done:
                    row, seed = running.pop(future)
                    self._finished(row, seed, future.result(), todo)
                    if (row, seed) == source:
                        queue.extend(waiting)
                        waiting = []
        except BaseException:
            for process in list(getattr(pool, "_processes", {}).values()):
                process.terminate()  # a killed run continues from its last checkpoint next time
            raise
        finally:
            pool.shutdown(wait=True, cancel_futures=True)

    def train_one(self, row: Row, seed: int) -> dict[str, Any]:
        """Train (or continue) one run, write its ``row.json`` and return it."""
        run_dir = self.run_dir(row, seed)
        start, started = time.perf_counter(), time.time()
        cfg = self.config(row, seed)
        if not run_dir.is_dir():
            run_dir.mkdir(parents=True)
            (run_dir / ROW_CONFIG).write_text(config_text(cfg))
        try:
            result = run_train(cfg, run_dir, resume=holds_a_run(run_dir), progress=False)
            outcome = {"train_seconds": result["seconds"], "metrics": result["metrics"]}
        except NonFiniteLossError as error:  # a result of the row at the table's rate: reported, not retried
            outcome = {"train_seconds": time.perf_counter() - start, "metrics": {}, "diverged": str(error)}
        if row.name == PROPOSAL_SOURCE and seed == 0 and "diverged" not in outcome:
            for split in ("train", "val"):
                run_proposals(run_dir, split, run_dir / f"{split}.proposals", [], progress=False)
            if (self.data_dir / "calibration").is_dir():  # Table 2's sweep evaluates on this split
                images, annotations = self.split_paths("calibration")
                run_proposals(run_dir, "val", run_dir / "calibration.proposals",
                              [f"data.val_images={images}", f"data.val_annotations={annotations}"],
                              progress=False)
        record = {"table": row.table, "row": row.key, "label": row.label, "preset": row.preset, "seed": seed,
                  **outcome, "seconds": time.perf_counter() - start, "started": started, "ended": time.time(),
                  "curve": eval_curve(run_dir)}
        (run_dir / "row.json").write_text(json.dumps(record, indent=1))
        return record

    def _finished(self, row: Row, seed: int, record: dict[str, Any], todo: list[tuple[Row, int]]) -> None:
        self.trained += 1
        self.progress(self._progress_line(row, seed, todo, record))

    def _progress_line(self, row: Row, seed: int, todo: list[tuple[Row, int]], record: dict[str, Any]) -> str:
        done = [json.loads((self.run_dir(r, s) / "row.json").read_text()) for r, s in todo
                if (self.run_dir(r, s) / "row.json").is_file()]
        per_row: dict[str, list[float]] = {}
        for item in done:
            per_row.setdefault(f"{item['table']}{item['row']}", []).append(item["seconds"])
        iters = self.budget.iters
        per_iteration = sum(item["seconds"] for item in done) / sum(iters[item["table"]] for item in done)
        left = sum(_mean(per_row.get(f"{r.table}{r.key}", [])) or per_iteration * iters[r.table]
                   for r, s in todo if not (self.run_dir(r, s) / "row.json").is_file())
        headline = (f"diverged ({record['diverged']})" if "diverged" in record
                    else _headline(record["metrics"]))
        return (f"[{len(done)}/{len(todo)}] table {row.table} {row.label} seed {seed}: {headline} "
                f"({record['seconds'] / 60:.1f} min); about {left / 60 / self.jobs:.0f} min left")

    def _image_pyramid(self) -> None:
        """Fig. 1(a): Table 3's single-scale C5 detector on an image pyramid, against FPN at one scale
        (recorded in ``pyramid.json`` once)."""
        path = self.out_dir / "pyramid.json"
        if path.is_file():
            return
        scales = list(self.budget.pyramid_scales)
        c5, fpn = self.run_dir(row_named("table3_b"), 0), self.run_dir(row_named("table3_c"), 0)
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

    def results(self) -> list[dict[str, Any]]:
        return [json.loads((self.run_dir(r, s) / "row.json").read_text()) for r, s in self.runs()
                if (self.run_dir(r, s) / "row.json").is_file()]


def config_text(cfg: Config) -> str:
    """The config a run is recorded with (``reproduce_config.json``)."""
    return json.dumps(to_dict(cfg), sort_keys=True)


def config_differences(recorded_text: str, cfg: Config) -> list[str]:
    """How a run recorded with ``recorded_text`` differs from ``cfg``: ``["train.base_lr: 0.01 ->
    0.02", ...]``, empty if it was made with ``cfg``. Fields added to the config since the run
    (absent from its record) count as their defaults and renamed fields are read under their new
    names (``fpn.config.overrides.RENAMED_FIELDS``), so neither makes every finished run stale."""
    try:
        values = upgrade_renamed(json.loads(recorded_text), "recorded config")
        recorded = from_dict(Config, values)
    except json.JSONDecodeError:
        return ["its recorded config is not JSON"]
    except (ConfigError, TypeError) as error:
        return [f"its recorded config no longer reads: {error}"]
    found = differences(_comparable(to_dict(recorded)), _comparable(to_dict(cfg)))
    names = sorted(found, key=lambda name: name.split("."))  # section by section, as the files read
    return [f"{name}: {found[name][0]!r} -> {found[name][1]!r}" for name in names]


# Config fields that hold paths. A path into a study's folder (``work_dir``: full-data0, ...) is
# compared from that folder down, so a work folder named relatively (runs/reproduction) or
# absolutely, from any directory, or moved with its data, is the same study; other paths are
# compared as absolute paths.
STUDY_FOLDER = re.compile(r"(full|quick)-data-?\d+")
PATH_FIELDS = {"data": ("train_images", "train_annotations", "val_images", "val_annotations",
                        "train_proposals", "val_proposals"), "train": ("init",)}


# Fields that change how a run is computed, not what it computes: the number of data loading
# processes (each sample's flips and sampling come from its own seed; tests/engine/test_train.py checks
# that 0 and 2 give the same weights). A run made with another value is not stale.
RESULT_NEUTRAL_FIELDS = {"data": ("num_workers",)}


def _comparable(values: dict[str, Any]) -> dict[str, Any]:
    """A config mapping with its paths comparable (``STUDY_FOLDER``) and the result-neutral fields
    left out."""
    def comparable(path: Any) -> Any:
        if not isinstance(path, str) or not path:
            return path
        parts = Path(path).parts
        inside = [i for i, part in enumerate(parts) if STUDY_FOLDER.fullmatch(part)]
        return str(Path(*parts[inside[-1]:])) if inside else os.path.abspath(path)

    values = {**values}
    for section, names in PATH_FIELDS.items():
        part = {**values.get(section, {})}
        for name in names:
            value = part.get(name)
            part[name] = [comparable(v) for v in value] if isinstance(value, list) else comparable(value)
        values[section] = part
    for section, names in RESULT_NEUTRAL_FIELDS.items():
        values[section] = {k: v for k, v in values[section].items() if k not in names}
    return values


def same_config(recorded_text: str, cfg: Config) -> bool:
    """Whether a run recorded with ``recorded_text`` was made with ``cfg`` (``config_differences``)."""
    return not config_differences(recorded_text, cfg)


def recorded_differences(run_dir: Path, cfg: Config) -> list[str]:
    """``config_differences`` of the config recorded in ``run_dir``, or why there is none."""
    recorded = run_dir / ROW_CONFIG
    if not recorded.is_file():
        return [f"no {ROW_CONFIG} records its config"]
    return config_differences(recorded.read_text(), cfg)


def busy_seconds(records: list[dict[str, Any]]) -> float:
    """The time in which at least one of the runs ``records`` was training: the union of their
    ``started``..``ended`` intervals (runs trained side by side counted once); a record without
    them (written before they were recorded) adds its ``seconds``."""
    timed = sorted((r["started"], r["ended"]) for r in records if "started" in r and "ended" in r)
    total = sum(r["seconds"] for r in records if not ("started" in r and "ended" in r))
    covered_to = float("-inf")
    for begin, end in timed:
        total += max(0.0, end - max(begin, covered_to))
        covered_to = max(covered_to, end)
    return total


def _quiet(line: str) -> None:
    """A worker's progress: the parent prints a line when a run finishes."""


def _train_in_worker(reproduction: Reproduction, row_name: str, seed: int, threads: int) -> dict[str, Any]:
    """One run in a worker process of ``Reproduction.train`` (``threads`` torch threads)."""
    torch.set_num_threads(threads)
    return reproduction.train_one(row_named(row_name), seed)


def eval_curve(run_dir: Path) -> list[dict[str, float]]:
    """The run's evaluations in order: ``{"step", metric: value}`` (the metrics log's ``eval`` records;
    a half-written last line of a killed run is skipped)."""
    log = run_dir / "metrics.jsonl"
    records = read_metrics(log) if log.is_file() else []
    return [{"step": record["step"], **{k: v for k, v in record["eval"].items()
                                        if isinstance(v, int | float)}}
            for record in records if "eval" in record]


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else 0.0


def _coverage_line(measured: dict[str, Any]) -> str:
    """One line on the FPN RPN's anchor coverage, here and in the paper's geometry on COCO."""
    def shares(side: str) -> str:
        return " / ".join(f"{100 * cell['covered']:.0f}%" for name, cell in measured[side]["coverage"].items()
                          if name != "all")
    paper = f", {shares('paper')} in the paper's geometry on COCO" if "paper" in measured else ""
    return f"FPN anchors at IoU >= 0.7 (small / medium / large objects): {shares('ours')} here{paper}"


def _headline(metrics: dict[str, float]) -> str:
    for key in ("AP", "mask_AR@1000", "AR@1000"):
        if key in metrics:
            return f"{key} {metrics[key]:.3f}"
    return "-"


def budget_for(*, quick: bool, seeds: int | None, data_seed: int) -> Budget:
    """The full or quick budget, with ``seeds`` for every table of Tables 1-3 if given."""
    budget = QUICK if quick else FULL
    if seeds is not None:
        if seeds < 1:
            raise ConfigError(f"--seeds must be at least 1, got {seeds}")
        budget = replace(budget, seeds={t: (seeds if t in "123" else n) for t, n in budget.seeds.items()})
    return replace(budget, data_seed=data_seed)


def work_dir(work: str | Path, budget: Budget, quick: bool) -> Path:
    """Where a budget's data and runs live: one folder per budget kind and data seed."""
    return Path(work) / f"{'quick' if quick else 'full'}-data{budget.data_seed}"


def run_reproduction(*, quick: bool = False, seeds: int | None = None, data_seed: int = 0,
                     output: str | Path = "reports/reproduction", work: str | Path = "runs/reproduction",
                     device: str = "auto", only: tuple[str, ...] = (), jobs: int = 1,
                     retrain_stale: bool = False, report_only: bool = False,
                     progress: Callable[[str], None] = print) -> Path:
    """Train and evaluate every row (continuing a killed run in ``work``), then write the report.

    ``jobs`` runs train at once; ``retrain_stale`` moves runs made with another config aside and
    trains them again (without it they stop the study with a ``StaleRunError``); ``report_only``
    writes the report of the runs finished so far and trains nothing (safe beside a running study)."""
    from fpn.reproduction.report import write_report

    budget = budget_for(quick=quick, seeds=seeds, data_seed=data_seed)
    for name in only:
        row_named(name)
    if jobs < 1:
        raise ConfigError(f"--jobs must be at least 1, got {jobs}")
    if report_only and retrain_stale:
        raise ConfigError("--report-only trains and moves nothing: it cannot be given with --retrain-stale")
    reproduction = Reproduction(work_dir(work, budget, quick), budget, device, progress, tuple(only),
                                retrain_stale=retrain_stale, jobs=jobs)
    count = len(list(reproduction.runs()))
    progress(f"{'the finished runs of' if report_only else 'reproducing'} the paper in miniature: "
             f"{count} training runs in {reproduction.out_dir} ({'quick' if quick else 'full'} budget; "
             f"seeds per table: {budget.seeds}; data seed {data_seed})")
    start = time.perf_counter()
    result = reproduction.finished() if report_only else reproduction.run()
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    options = [("--quick", quick), (f"--seeds {seeds}", seeds is not None),
               (f"--data-seed {data_seed}", data_seed), (f"--rows {','.join(only)}", only),
               ("--report-only", report_only)]
    command = " ".join(["fpn reproduce", *(text for text, given in options if given)])
    # A resumed run's wall clock misses the rows an earlier invocation finished, and runs trained
    # side by side (--jobs) overlap: the report gives the machine's busy time (busy_seconds).
    this_invocation = time.perf_counter() - start
    compute = (busy_seconds(result["rows"]) + result["pyramid"].get("seconds", 0.0)
               + result["pretraining"].get("seconds", 0.0))
    last = (f"the last invocation trained {reproduction.trained} of them in {this_invocation / 60:.0f} min"
            if reproduction.trained else "the last invocation only wrote this report")
    if len(result["rows"]) < count:
        last += (f". **{len(result['rows'])} of the study's {count} runs are finished**: rows and seeds "
                 "missing from the tables below have not been trained yet")
    path = write_report(result, output, command=command, wall_seconds=compute, machine=machine_summary(),
                        budget=budget.describe(), geometry=reproduction.geometry(),
                        labels={row.name: f"Table {row.table} {row.label}" for row in ROWS},
                        notes=f"The time is the machine's busy time: the {len(result['rows'])} training runs "
                              "(each with its evaluation; runs trained side by side counted once), the "
                              "pre-training and the image pyramid's evaluation, including work an "
                              f"earlier, interrupted invocation finished; {last}.")
    progress(f"wrote {path}")
    return path
