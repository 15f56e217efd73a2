"""The data side: datasets in COCO and VOC formats, the synthetic benchmark, augmentation.

Nothing here imports the model.
"""

from fpn.data.coco import CocoDetection, collate_fn, pil_to_tensor, read_image
from fpn.data.errors import DatasetError
from fpn.data.transforms import Compose, RandomHorizontalFlip, hflip
from fpn.data.voc import VOC_CLASSES, VOCDetection

__all__ = ["CocoDetection", "VOCDetection", "VOC_CLASSES", "DatasetError", "collate_fn", "read_image",
           "pil_to_tensor",
           "Compose", "RandomHorizontalFlip", "hflip"]
