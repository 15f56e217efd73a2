"""The data side: datasets in COCO and VOC formats, the synthetic benchmark, the training data order.

- ``coco`` / ``voc``: the two dataset formats, tolerant of real-world files; ``read_image``;
- ``synthetic``: the built-in multi-scale benchmark (writes COCO format);
- ``order``: the seeded order and flips of training (exact resume), batches forever;
- ``transforms``: ``hflip``, which moves boxes and masks with the pixels;
- ``unreadable``: unreadable samples reported, skipped and counted;
- ``proposals``: the proposal files of Fast R-CNN on fixed proposals.

Nothing here imports the model.
"""

from fpn.data.coco import CocoDetection, pil_to_tensor, read_image
from fpn.data.errors import DatasetError
from fpn.data.transforms import hflip
from fpn.data.voc import VOC_CLASSES, VOCDetection

__all__ = ["CocoDetection", "VOCDetection", "VOC_CLASSES", "DatasetError", "read_image", "pil_to_tensor",
           "hflip"]
