"""The detector, one module per part of the paper (docs/architecture.md has the table).

``preprocess`` -> ``backbone`` (``conv_norm``) -> ``neck`` -> ``rpn`` (``anchors``, ``boxes``) ->
``roi_heads`` (``roi_align``) or ``segment_proposals``, assembled by ``detector.FasterRCNN``;
``image_pyramid`` is the test-time baseline of Fig. 1(a); ``fuse`` and ``quantize`` are the
inference paths beside the model. Nothing here imports the data side, the engine or anything above.
"""
