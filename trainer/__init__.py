"""The edge-ser trainer: manifests, soft labels, augmentation, frozen-layer cache, training, evaluation, LOCO.

Entry points: ``python -m trainer.train`` (``edge-ser-train``), ``python -m trainer.evaluate``
(``edge-ser-eval``), ``python -m trainer.loco`` and ``python -m trainer.baselines``.
"""
