"""Benchmarks: fpn against torchvision, measured in one process on identical weights and inputs.

An experiment beside the library, not part of it: these modules import the library (the model,
the converters, the evaluation), and only the command line imports them (``fpn bench``).

- ``reference``: torchvision's R50-FPN Faster R-CNN, the one reference every benchmark (and
  ``scripts/standin_weights.py``) builds, and our detector holding its weights;
- ``common``: timing, memory and Markdown helpers;
- ``roofline``: the GEMM / convolution peak this machine reaches per precision (what the CPU is:
  ``fpn.hardware``);
- ``inference``: ``fpn bench``, latency per input and per precision;
- ``training``: ``fpn bench --train``, the time of an SGD step;
- ``gates``: the accuracy gates of the low precisions (``fpn.model.precision``).
"""
