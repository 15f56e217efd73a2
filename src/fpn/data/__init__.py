"""The data side: datasets in COCO, VOC and YOLO formats, the synthetic benchmark, the training data order.

- ``dataset``: the contract every format fulfils (``DetectionDataset``), its validated records
  (``AnnotatedImage``) and the rule for bad records (``Problems``);
- ``formats``: the table of formats every job opens datasets through;
- ``coco`` / ``voc`` / ``yolo``: the formats, read and checked once;
- ``images``: reading image files (``read_image``, ``header_hw``);
- ``synthetic``: the built-in multi-scale benchmark (writes COCO format);
- ``order``: the seeded order and flips of training (exact resume), batches forever;
- ``transforms``: ``hflip``, which moves boxes and masks with the pixels;
- ``unreadable``: unreadable samples reported, skipped and counted;
- ``proposals``: the proposal files of Fast R-CNN on fixed proposals.

Nothing here imports the model.
"""

from fpn.data.coco import CocoDetection
from fpn.data.dataset import AnnotatedImage, DetectionDataset
from fpn.data.images import pil_to_tensor, read_image
from fpn.data.transforms import hflip
from fpn.data.voc import VOC_CLASSES, VOCDetection

__all__ = ["AnnotatedImage", "CocoDetection", "DetectionDataset", "VOCDetection", "VOC_CLASSES",
           "read_image", "pil_to_tensor", "hflip"]
