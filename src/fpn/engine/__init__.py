"""Training of a model the caller built: the engine never builds a model.

- ``train``: ``Trainer``, the parts a config asks for put together, and ``train()``;
- ``loop``: ``TrainLoop``, the SGD steps, and ``HookBase``, what runs between them;
- ``hooks``: progress bar, metrics writer, periodic checkpoints, periodic evaluation;
- ``optim``: SGD, the learning-rate schedule, the heads-only warm-up;
- ``metrics_log``: ``metrics.jsonl`` written (with CSV and TensorBoard sinks) and read back;
  ``training_curves``: ``curves.png``;
- ``init_sources``, ``init_loading``: ``train.init``, its sources read, then loaded into a model;
- ``checkpoint``: atomic safetensors checkpoints, the run layout, resume state;
- ``rng``: seeding and saving every random stream.

Evaluation is its own package (``fpn.evaluation``); joining ``torchrun``'s processes is
``fpn.distributed``.

Layering: ``engine`` imports ``evaluation``, ``model``, ``data`` and the neutral helpers, never
``jobs`` or ``cli``.
"""
