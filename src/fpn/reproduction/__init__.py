"""The paper's ablations in miniature (``fpn reproduce``): an experiment built on the library.

``plan`` says what is trained (the rows, the miniature transform, the budgets), ``study`` runs it
(data, pre-training, rows, image pyramid, resumable), ``calibrate`` measures the evidence the
schedules are chosen from, ``report`` writes the tables and checks the paper's claims. The library
(``fpn.model``, ``fpn.engine``, ``fpn.jobs``) never imports this package.
"""
