"""What the reproduction trains: the rows of the paper's tables, the miniature transform, the budgets.

Every row is a preset of the paper's (``rpn_*`` for Table 1, ``fast_*`` for Table 2,
``ablation_*``/``paper_r50_fpn`` for Table 3, ``segprop_*`` for Table 6) shrunk by one transform
shared by all rows (``miniature``):

- the bottom-up pathway is a ResNet-18 at quarter width, **pre-trained** as a classifier of object
  crops (``fpn pretrain``, the miniature's ImageNet) and then fine-tuned with the paper's
  convention: frozen BatchNorm statistics, the stem and res2 fixed (docs/paper.md §6);
- the pyramid, the RPN head and the box head are a quarter as wide;
- the geometry is the paper's own, in pixels (``geometry="paper"``, the default): anchors of 32..512
  px on P2..P6, Eq. 1 with 224 px and k0 = 4, the segment proposals' object scales, the ResNet
  strides, on a benchmark whose objects are as many pixels across as COCO's are at 800 px; the
  miniature shrinks the field of view (384-px images), not the objects. The first studies'
  transform (``geometry="scaled"``) multiplied anchors, the canonical size and the object scales by
  image size / 800 but could not scale the strides, so objects were ~3x smaller in units of stride
  than in the paper (reports/reproduction/discussion.md); it stays reachable by name for comparison;
- every row of a table shares its schedule and learning rate (chosen from the calibration curves
  in ``reports/reproduction/calibration/``, never per row).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

from fpn.config.schema import Config
from fpn.errors import ConfigError

PAPER_IMAGE_SIZE = 800  # the shorter side of the paper's training and test images (docs/paper.md §6)

# The five levels of the paper's RPN (P2-P6) and the top-k each keeps before NMS in the miniature.
PYRAMID_LEVELS = ("p2", "p3", "p4", "p5", "p6")
PRE_NMS_PER_LEVEL = {"train": 600, "test": 1000}


@dataclass(frozen=True)
class Budget:
    """How much data, pre-training and training every row gets."""

    train_images: int
    val_images: int
    pretrain_images: int  # the pre-training split: its own random stream, never the val images
    image_size: int
    iters: dict[str, int]  # per table: every row of a table shares its schedule
    base_lr: dict[str, float]  # per table, for batch_size images (docs/paper.md §6 scales it linearly)
    seeds: dict[str, int]  # per table: every row of Tables 1-3 is trained with each seed
    pretrain_iters: int
    pretrain_batch: int = 128
    batch_size: int = 4
    variant: str = "context"  # the benchmark (docs/benchmarks.md)
    geometry: str = "paper"  # "paper": pixels as in the paper; "scaled": the first studies' (``miniature``)
    calibration_images: int = 0  # the split schedules are chosen on: its own random stream
    data_seed: int = 0  # the benchmark's generator seed (``--data-seed``)
    pyramid_scales: tuple[int, ...] = ()  # shorter sides of the featurized image pyramid
    eval_every: dict[str, int] = field(default_factory=dict)  # per table: evaluation curve period (0: end)
    # data loading processes per run. None: a miniature step reads 4 small PNGs, and a loader
    # process cost its start and up to 5 s at every epoch's end (torch's DataLoader shutdown),
    # about 7% of a Table 1 run; with --jobs the cores are busy training anyway
    data_workers: int = 0

    def describe(self) -> dict:
        return {"variant": self.variant, "geometry": self.geometry, "data_seed": self.data_seed,
                "train_images": self.train_images, "val_images": self.val_images,
                "calibration_images": self.calibration_images, "pretrain_images": self.pretrain_images,
                "image_size": self.image_size, "pretrain_iters": self.pretrain_iters, "iters": self.iters,
                "base_lr": self.base_lr, "seeds": self.seeds, "batch_size": self.batch_size}


# The schedules below are those the calibration chose for the *scaled* geometry (Tables 1 and 2;
# Table 3's 600 steps were never calibrated). The paper geometry (384-px images, the study's default
# since issue 34) needs its own: ``fpn reproduce --calibrate 1|2|3`` on the calibration split, then
# these numbers replaced by the records' choices (reports/reproduction/calibration/).
FULL = Budget(train_images=600, val_images=300, pretrain_images=1500, image_size=384,
              iters={"1": 800, "2": 1000, "3": 600, "6": 500},
              base_lr={"1": 0.01, "2": 0.01, "3": 0.01, "6": 0.0075},
              seeds={"1": 3, "2": 3, "3": 3, "6": 1}, pretrain_iters=1000, calibration_images=300,
              pyramid_scales=(192, 272, 384, 543, 768))
QUICK = Budget(train_images=4, val_images=2, pretrain_images=8, image_size=64,
               iters={"1": 1, "2": 1, "3": 1, "6": 1}, base_lr=FULL.base_lr,
               seeds={"1": 2, "2": 2, "3": 2, "6": 1}, pretrain_iters=2, pretrain_batch=16, batch_size=2,
               calibration_images=2, pyramid_scales=(48, 64, 96))


@dataclass(frozen=True)
class Row:
    """One row of one of the paper's tables."""

    table: str  # "1", "2", "3", "6"
    key: str  # the paper's row letter, or the MLP variant
    label: str
    preset: str

    @property
    def name(self) -> str:
        return f"table{self.table}_{self.key}"


ROWS = [
    Row("1", "a", "(a) C4", "rpn_a_c4"),
    Row("1", "b", "(b) C5", "rpn_b_c5"),
    Row("1", "c", "(c) FPN", "rpn_c_fpn"),
    Row("1", "d", "(d) bottom-up pyramid", "rpn_d_bottom_up"),
    Row("1", "e", "(e) top-down, no lateral", "rpn_e_no_lateral"),
    Row("1", "f", "(f) only P2", "rpn_f_p2_only"),
    Row("2", "a", "(a) C4, conv5 head", "fast_a_c4"),
    Row("2", "b", "(b) C5, 2fc head", "fast_b_c5"),
    Row("2", "c", "(c) FPN", "fast_c_fpn"),
    Row("2", "d", "(d) bottom-up pyramid", "fast_d_bottom_up"),
    Row("2", "e", "(e) top-down, no lateral", "fast_e_no_lateral"),
    Row("2", "f", "(f) only P2", "fast_f_p2_only"),
    Row("3", "a", "(a) C4, conv5 head", "ablation_a_c4"),
    Row("3", "b", "(b) C5, 2fc head", "ablation_b_c5"),
    Row("3", "c", "(c) FPN", "paper_r50_fpn"),
    Row("6", "5x5", "single 5x5 MLP", "segprop_5x5"),
    Row("6", "7x7", "single 7x7 MLP", "segprop_7x7"),
    Row("6", "dual", "5x5 and 7x7 MLPs", "segprop_dual"),
]


def row_named(name: str) -> Row:
    """The row called ``name`` (``table2_c``); a one-line error naming the known rows otherwise."""
    for row in ROWS:
        if row.name == name:
            return row
    raise ConfigError(f"no row {name!r} (rows: {', '.join(r.name for r in ROWS)})")


GEOMETRIES = ("paper", "scaled")


def miniature(cfg: Config, image_size: int, geometry: str = "paper") -> Config:
    """The paper's preset at CPU size: the same transform for every row (module docstring).
    ``geometry="scaled"`` multiplies the anchors, Eq. 1's canonical size and the segment proposals'
    object scales by ``image_size`` / 800; ``"paper"`` keeps them in the paper's pixels."""
    if geometry not in GEOMETRIES:
        raise ConfigError(f"unknown geometry {geometry!r} (known: {', '.join(GEOMETRIES)})")
    cfg = copy.deepcopy(cfg)
    scale = image_size / PAPER_IMAGE_SIZE if geometry == "scaled" else 1.0
    m = cfg.model
    m.backbone.depth, m.backbone.width = 18, 16
    m.backbone.norm, m.backbone.freeze_at = "frozen_bn", 2  # pre-trained, then the paper's convention
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
    m.input.min_size_train, m.input.min_size_test = [image_size], image_size
    m.input.max_size = image_size
    return cfg


def pretraining_config(image_size: int, budget: Budget) -> Config:
    """The pre-training of the miniature's backbone (``fpn pretrain`` with these fields)."""
    cfg = miniature(Config(), image_size, budget.geometry)
    p = cfg.pretrain
    p.iters, p.batch_size = budget.pretrain_iters, budget.pretrain_batch
    p.warmup_iters = min(p.warmup_iters, max(1, budget.pretrain_iters // 10))
    return cfg
