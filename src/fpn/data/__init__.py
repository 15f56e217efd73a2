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
