"""A training run's folder: when training may start in it, resume it, or clear it.

A run folder holds what training writes (``RUN_OUTPUTS``): ``checkpoints/``, ``metrics.jsonl``
with its views ``metrics.csv`` and ``curves.png``, ``eval/`` and ``tensorboard/``, beside
``config.yaml``. Three rules keep a run from being lost or
silently changed:

- **A new run never lands in an old one.** Training without ``--resume`` into a folder that holds
  a run is refused in one line; ``--overwrite`` clears the run's outputs first (only then).
- **A resumed run keeps its config.** Its checkpoint's config (else the folder's ``config.yaml``)
  is the truth; a config asked for on resume may differ from it only in ``SAFE_ON_RESUME``
  fields (the length of the schedule, periods, the device, evaluation-only settings); any other
  difference changes the model or the data the weights were trained with and is refused in one
  line naming the fields.
- **The metrics log restarts where the checkpoint is**: records after its step (which will be
  trained again) and a half-written last line are dropped (``fpn.engine.metrics_log``).
"""

from __future__ import annotations

import logging
import re
import shutil
from pathlib import Path
from typing import Any

from fpn.config.diff import differences
from fpn.config.files import load_config
from fpn.config.overrides import merge, nested
from fpn.config.schema import Config
from fpn.engine.checkpoint import latest_checkpoint
from fpn.engine.metrics_log import CSV_FILE, CURVES_FILE, METRICS_FILE, read_metrics, write_metrics
from fpn.errors import ConfigError, UserError

log = logging.getLogger(__name__)

# What training writes into a run folder (config.yaml is rewritten by every start).
RUN_OUTPUTS = ("checkpoints", METRICS_FILE, CSV_FILE, CURVES_FILE, "eval", "tensorboard")

# Fields a resumed run may change: they extend or shorten the schedule, change how often it logs,
# saves and evaluates, where it runs, or what the evaluation reads and keeps. None changes the
# model, the training data, or the optimisation of the steps already taken (lr_steps moves the
# decays; a decay already passed changes the rate from the resumed step on).
SAFE_ON_RESUME = (
    "train.max_iter", "train.lr_steps", "train.checkpoint_period", "train.eval_period",
    "train.log_period", "train.keep_checkpoints", "train.device", "train.precision", "train.max_bad_samples",
    "data.num_workers", "data.on_bad_annotations",
    "data.val_images", "data.val_annotations", "data.val_proposals",
    "model.input.min_size_test", "model.input.test_scales",
    "model.rpn.pre_nms_top_n_test", "model.rpn.post_nms_top_n_test",
    "model.roi_heads.score_thresh", "model.roi_heads.nms_thresh", "model.roi_heads.min_box_size",
    "model.roi_heads.detections_per_image",
    "model.segment_proposals.detections_per_image", "model.segment_proposals.mask_threshold",
)

# Read only when a run starts: on resume the checkpoint's weights replace them; the run keeps its own.
NOT_READ_ON_RESUME = ("train.init", "train.init_skip_mismatched")


class RunExistsError(UserError):
    """Training without --resume into a folder that holds a run."""


class ResumeError(UserError):
    """A resume asked for a config that changes the run's model or data, or has nothing to resume."""


def holds_a_run(run_dir: str | Path) -> bool:
    """Whether training wrote into ``run_dir``: a checkpoint, a metrics record or an evaluation."""
    run_dir = Path(run_dir)
    if latest_checkpoint(run_dir / "checkpoints") is not None:
        return True
    metrics = run_dir / METRICS_FILE
    if metrics.is_file() and metrics.stat().st_size > 0:
        return True
    return (run_dir / "eval").is_dir() and any((run_dir / "eval").iterdir())


def refuse_to_overwrite(run_dir: str | Path) -> None:
    """Raise ``RunExistsError`` if ``run_dir`` holds a run (training would start over into it)."""
    run_dir = Path(run_dir)
    if not holds_a_run(run_dir):
        return
    checkpoint = latest_checkpoint(run_dir / "checkpoints")
    what = f"its last checkpoint is step {checkpoint_step(checkpoint)}" if checkpoint else "no checkpoint yet"
    raise RunExistsError(f"{run_dir} already holds a training run ({what}): continue it with --resume, "
                         "train into a new --output folder, or start over with --overwrite (deletes its "
                         "checkpoints, metrics and evaluations)")


def clear_run(run_dir: str | Path) -> list[str]:
    """Delete the run's outputs (``RUN_OUTPUTS``), for ``--overwrite``; the names deleted."""
    run_dir = Path(run_dir)
    deleted = []
    for name in RUN_OUTPUTS:
        path = run_dir / name
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()
        else:
            continue
        deleted.append(name)
    if deleted:
        log.info("--overwrite: deleted %s from %s", ", ".join(deleted), run_dir)
    return deleted


def checkpoint_step(checkpoint: Path) -> int:
    """The step of a checkpoint folder, from its name (``step_0000300`` -> 300)."""
    match = re.fullmatch(r"step_(\d+)", checkpoint.name)
    if match is None:
        raise ResumeError(f"{checkpoint}: not a checkpoint folder of a run (expected step_NNNNNNN)")
    return int(match.group(1))


def saved_config(run_dir: Path, checkpoint: Path | None) -> Config | None:
    """The config the run was trained with: its checkpoint's, else the folder's, else None."""
    for path in ([checkpoint / "config.yaml"] if checkpoint else []) + [run_dir / "config.yaml"]:
        if path.is_file():
            try:
                return load_config(path)
            except ConfigError as err:
                raise ResumeError(f"cannot resume: {err}") from None
    return None


def resumed_config(requested: Config, saved: Config, run_dir: Path) -> tuple[Config, list[str]]:
    """The config a resumed run continues with: ``saved`` with the ``SAFE_ON_RESUME`` fields that
    ``requested`` changes, and a line per change. Any other difference is a ``ResumeError``
    naming the fields (fields ``NOT_READ_ON_RESUME`` keep the run's values)."""
    changed = {name: values for name, values in differences(saved, requested).items()
               if name not in NOT_READ_ON_RESUME}
    refused = [name for name in changed if name not in SAFE_ON_RESUME]
    if refused:
        shown = ", ".join(f"{name} ({_short(changed[name][0])} -> {_short(changed[name][1])})"
                          for name in refused[:4])
        more = f" and {len(refused) - 4} more" if len(refused) > 4 else ""
        raise ResumeError(f"{run_dir}: resuming cannot change {shown}{more}: the run's weights were trained "
                          "with its own values; train into a new --output folder for these, or start over "
                          "with --overwrite")
    notes = [f"resume changes {name}: {_short(have)} -> {_short(want)}"
             for name, (have, want) in changed.items()]
    safe = {name: want for name, (_, want) in changed.items()}
    return merge(saved, nested(safe), "resume") if safe else saved, notes


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def trim_metrics_for_resume(run_dir: Path, step: int, *, evaluates_again: bool) -> int:
    """Rewrite ``metrics.jsonl`` to what the run had logged up to its checkpoint at ``step``: later
    records are trained again and logged anew, a half-written line goes, and with
    ``evaluates_again`` (a finished run evaluated once more) so does the evaluation at ``step``.
    Returns the number of records dropped."""
    path = run_dir / METRICS_FILE
    if not path.is_file():
        return 0
    lines = sum(1 for line in path.read_text(errors="replace").split("\n") if line.strip())
    kept = [r for r in read_metrics(path) if _before(r, step, evaluates_again)]
    dropped = lines - len(kept)
    if dropped:
        write_metrics(path, kept)
        log.info("%s: %d record(s) after the checkpoint at step %d dropped (they are trained again)",
                 path, dropped, step)
    return dropped


def _before(record: dict[str, Any], step: int, evaluates_again: bool) -> bool:
    """Whether a record belongs to the run up to its checkpoint at ``step``."""
    at = record.get("step")
    if not isinstance(at, int) or at > step:
        return False
    return at < step or not (evaluates_again and "eval" in record)
