"""Evaluation: a model run over a data set, its outputs scored, one typed result (docs/paper.md §4-5).

- ``inference``: the evaluation loop (``inference_on_dataset``) and ``evaluate_detector``, the
  loop with the evaluators a detector's parts call for;
- ``evaluators``: one evaluator per metric family (boxes, proposals, masks, VOC), each with
  ``process`` and ``evaluate``;
- ``result``: ``EvalResult``, the typed result, printed as the paper's table and saved;
- ``coco``: box AP, proposal AR and mask AR through pycocotools (the official COCO protocol);
- ``voc``: Pascal VOC's mAP by the VOC devkit's rules;
- ``per_class``: per-class AP and precision-recall curves read from pycocotools' arrays;
- ``confusion``: the confusion matrix and each image's false positives and misses;
- ``plots``: the pictures of an evaluation (precision-recall curves, confusion matrix).

Layering: ``evaluation`` imports ``model``, ``data`` and the neutral helpers, never ``engine``,
``jobs``, ``api`` or ``cli``; the engine's periodic evaluation imports it.
"""
