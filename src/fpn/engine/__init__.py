"""Training and evaluation of a model the caller built: the engine never builds a model.

- ``train``: ``Trainer``, the parts a config asks for put together, and ``train()``;
- ``loop``: ``TrainLoop``, the SGD steps, and ``HookBase``, what runs between them;
- ``hooks``: progress bar, metrics writer, periodic checkpoints, periodic evaluation;
- ``optim``: SGD, the learning-rate schedule, the heads-only warm-up;
- ``metrics``: ``metrics.jsonl`` and TensorBoard sinks;
- ``checkpoint``: atomic safetensors checkpoints, the run layout, resume state;
- ``rng``: seeding and saving every random stream;
- ``distributed``: joining ``torchrun``'s processes;
- ``evaluate``: COCO AP and AR through pycocotools; ``voc_eval``: Pascal VOC's own mAP.

Layering: ``engine`` imports ``model``, ``data`` and the neutral helpers, never ``jobs`` or ``cli``.
"""
