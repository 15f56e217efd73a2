"""Training and evaluation of a model the caller built: the engine never builds a model.

- ``train``: ``Trainer``, the parts a config asks for put together, and ``train()``;
- ``loop``: ``TrainLoop``, the SGD steps, and ``HookBase``, what runs between them;
- ``hooks``: progress bar, metrics writer, periodic checkpoints, periodic evaluation;
- ``optim``: SGD, the learning-rate schedule, the heads-only warm-up;
- ``metrics``: ``metrics.jsonl`` and TensorBoard sinks;
- ``checkpoint``: atomic safetensors checkpoints, the run layout, resume state;
- ``rng``: seeding and saving every random stream;
- ``distributed``: joining ``torchrun``'s processes;
- ``evaluate``: the evaluation loop; ``evaluators``: one evaluator per metric family (boxes,
  proposals, masks, VOC), each with ``process`` and ``evaluate``; ``results``: ``EvalResult``, the
  typed result, printed and saved; ``coco_eval`` and ``voc_eval`` score through pycocotools and
  the VOC devkit's rules; ``per_class`` reads per-class AP and precision-recall curves from
  pycocotools' arrays; ``confusion`` and ``plots`` draw what an evaluation found.

Layering: ``engine`` imports ``model``, ``data`` and the neutral helpers, never ``jobs`` or ``cli``.
"""
