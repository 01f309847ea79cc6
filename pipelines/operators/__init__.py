"""Producer operators: one small module per concern, each scoring a decoded sample once.

Every operator has a ``name`` (its Parquet score column, ``score_*``), the stage (1..7) it
belongs to, a ``score`` computed from the analysis image or its metadata, and declarative
threshold checks (``base.Check``) that turn a stored score plus the configured thresholds into
a drop reason: scores are computed once, thresholds can be re-applied later ("score once,
filter many").

Modules: ``integrity`` (broken file, file size), ``resolution``, ``dedup`` (perceptual hash and
the global duplicate pass), ``orientation``, ``sharpness`` (blur), ``brightness`` (luma,
exposure), ``color`` (saturation), ``entropy``, ``texture``, ``compression`` (JPEG blockiness),
``abnormal`` (QR code, barcode); ``thresholds`` holds the configurable thresholds, ``registry``
runs every operator over a batch, ``stage`` computes the highest stage passed.
"""
