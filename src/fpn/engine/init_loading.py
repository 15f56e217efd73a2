"""``train.init`` loaded: the sources ``fpn.engine.init_sources`` read, put into a model (docs/finetuning.md).

A source is an fpn run or checkpoint, a detector checkpoint of torchvision, detectron2 or
mmdetection (converted to our key names by ``fpn.interop``), or a torchvision ImageNet ResNet
(loaded into the bottom-up pathway). Sources load in order, later ones winning.

Three things happen, and the report says each:

1. **Conventions follow the weights.** What a source's numbers mean (channel order, pixel scale,
   mean and std of the input; stride placement in the bottlenecks; FrozenBN's eps) is copied
   into the run's config before the model is built, so the run computes what the source did.
2. **Class-specific rows follow the class names.** The classifier (``cls_score``: K + 1 rows,
   background first) and the box regressor (``bbox_pred``: 4 rows per class) are rebuilt for the
   training set's classes: background and every class whose name the source also has are copied
   from the source; the others keep the model's fresh initialisation.
3. **Everything else loads as it is**, shapes checked: a shape that does not fit is a one-line
   error naming the tensor and both shapes, unless ``train.init_skip_mismatched`` (then that tensor
   keeps its fresh initialisation, and the report names it).
"""

from __future__ import annotations

import re

from torch import Tensor

from fpn.engine.init_sources import InitSource
from fpn.errors import CheckpointError, ConversionError, InitError
from fpn.interop.torchvision import load_torchvision_resnet
from fpn.model.detector import FasterRCNN

# The class-specific tensors of the box head and how many rows each class owns.
CLASS_ROWS = {
    "roi_heads.box_predictor.cls_score.weight": 1,
    "roi_heads.box_predictor.cls_score.bias": 1,
    "roi_heads.box_predictor.bbox_pred.weight": 4,
    "roi_heads.box_predictor.bbox_pred.bias": 4,
}

PREDICTOR = "roi_heads.box_predictor (cls_score, bbox_pred)"

def _name_key(name: str) -> str:
    """Compared without case, spaces, underscores or hyphens: 'Traffic_light' = 'traffic light'."""
    return re.sub(r"[\s_\-]+", " ", name.strip().lower())


def match_classes(source_names: list[str], target_names: list[str]) -> dict[int, int]:
    """{target label: source label} (labels 1..K; 0 is background) for classes of the same name."""
    by_name: dict[str, int] = {}
    for label, name in enumerate(source_names, start=1):
        by_name.setdefault(_name_key(name), label)
    return {label: by_name[_name_key(name)] for label, name in enumerate(target_names, start=1)
            if _name_key(name) in by_name}


def carry_over_class_rows(state: dict[str, Tensor], fresh: dict[str, Tensor],
                          target_from_source: dict[int, int]) -> dict[str, Tensor]:
    """The class-specific tensors for the target classes: background and matched classes' rows from
    ``state``, the others from ``fresh`` (the model's own initialisation)."""
    rebuilt = {}
    for key, rows_per_class in CLASS_ROWS.items():
        out = fresh[key].clone()
        for target, source in {0: 0, **target_from_source}.items():
            out[target * rows_per_class:(target + 1) * rows_per_class] = \
                state[key][source * rows_per_class:(source + 1) * rows_per_class]
        rebuilt[key] = out
    return rebuilt


def _class_rows(source: InitSource, model: FasterRCNN, report: list[str]) -> dict[str, Tensor]:
    """Replace the source's class-specific tensors by ones shaped for the model's classes."""
    own = model.state_dict()
    state = dict(source.state_dict)
    if not all(k in state for k in CLASS_ROWS) or not all(k in own for k in CLASS_ROWS):
        return state
    source_names = list(source.cfg.class_names) if source.cfg is not None else []
    target_names = list(model.cfg.class_names)
    source_classes = state["roi_heads.box_predictor.cls_score.weight"].shape[0] - 1
    target_classes = own["roi_heads.box_predictor.cls_score.weight"].shape[0] - 1
    if source_names and target_names:
        matched = match_classes(source_names, target_names)
        carried = [target_names[t - 1] for t in sorted(matched)]
        fresh = [name for label, name in enumerate(target_names, start=1) if label not in matched]
        report.append(f"  classes: {len(carried)} of {target_classes} carried over by name"
                      + (f" ({_listing(carried)})" if carried else ""))
        if fresh:
            report.append(f"  re-initialised: {PREDICTOR} rows of {len(fresh)} class(es) the source does "
                          f"not have ({_listing(fresh)})")
        if matched == {i: i for i in range(1, target_classes + 1)} and source_classes == target_classes:
            return state  # the same classes in the same order
    elif source_classes == target_classes:
        report.append(f"  classes: names unknown on one side; {PREDICTOR} rows of all {target_classes} "
                      "classes loaded by position")
        return state
    else:
        matched = {}
        report.append(f"  re-initialised: {PREDICTOR}: {source_classes} classes in the source, "
                      f"{target_classes} here, and no class names to match them by")
    state.update(carry_over_class_rows(state, own, matched))
    return state


def _listing(names: list[str], most: int = 8) -> str:
    return ", ".join(names[:most]) + (f", ... ({len(names) - most} more)" if len(names) > most else "")


def _fit_shapes(source: InitSource, state: dict[str, Tensor], model: FasterRCNN, skip_mismatched: bool,
                report: list[str]) -> dict[str, Tensor]:
    own = model.state_dict()
    mismatched = [k for k, v in state.items() if k in own and own[k].shape != v.shape]
    if mismatched and not skip_mismatched:
        key = mismatched[0]
        raise InitError(f"{source.path}: {key} has shape {tuple(state[key].shape)}, this model's is "
                        f"{tuple(own[key].shape)} ({len(mismatched)} tensor(s) do not fit; another "
                        "architecture? train.init_skip_mismatched=true keeps fresh ones instead)")
    if mismatched:
        report.append(f"  re-initialised (shape does not fit, train.init_skip_mismatched): "
                      f"{_listing(mismatched, 4)}")
    return {k: v for k, v in state.items() if k not in mismatched}


def _load_backbone(source: InitSource, model: FasterRCNN, report: list[str]) -> None:
    if model.cfg.backbone.norm == "gn":
        raise InitError(f"{source.path}: ImageNet BatchNorm statistics cannot initialise a GroupNorm "
                        "backbone (model.backbone.norm: gn)")
    try:
        load_torchvision_resnet(model.backbone, source.state_dict)
    except ConversionError as err:
        raise InitError(f"{source.path}: {err}") from None
    report.append("  loaded: backbone (ImageNet classifier dropped); kept fresh: the pyramid and the heads")


def _res5_into_head(state: dict[str, Tensor], model: FasterRCNN, report: list[str]) -> dict[str, Tensor]:
    """A source's ``backbone.res5`` on a C4 detector, whose bottom-up pathway stops at res4: it
    initialises the conv5 RoI head (He et al.'s C4 baseline starts its head from the pre-trained
    res5, ablation a), or is left out when the model has no such head (the C4 RPN alone)."""
    own = model.state_dict()
    res5 = {k: v for k, v in state.items() if k.startswith("backbone.res5.")}
    if not res5 or any(k.startswith("backbone.res5.") for k in own):
        return state
    rest = {k: v for k, v in state.items() if k not in res5}
    moved = {"roi_heads.box_head.res5." + k[len("backbone.res5."):]: v for k, v in res5.items()}
    if set(moved) <= set(own):
        report.append("  backbone.res5 -> roi_heads.box_head.res5 (the C4 detector's conv5 head)")
        return {**rest, **moved}
    report.append("  left out: backbone.res5 (this C4 model has no stage that uses it)")
    return rest


def initialise(model: FasterRCNN, sources: list[InitSource], *, skip_mismatched: bool = False) -> list[str]:
    """Load the sources into ``model`` in order; the report, one line per fact."""
    report = []
    for index, source in enumerate(sources, start=1):
        report.append(f"init {index}/{len(sources)}: {source.describe()}")
        if source.library == "torchvision_resnet":
            _load_backbone(source, model, report)
            continue
        state = _res5_into_head(_class_rows(source, model, report), model, report)
        state = _fit_shapes(source, state, model, skip_mismatched, report)
        try:
            parts = model.load_parts(state, source=source.path, allow_missing=True)
        except CheckpointError as err:
            raise InitError(str(err)) from None
        report.append(f"  loaded: {', '.join(parts['loaded']) or '-'}"
                      + (f"; not in this model: {', '.join(parts['skipped'])}" if parts["skipped"] else "")
                      + (f"; kept fresh: {', '.join(parts['fresh'])}" if parts["fresh"] else ""))
    return report
