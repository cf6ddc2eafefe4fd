"""Imports every reader module so each registers its kind in bench.data.spec.READERS."""
from bench.data import archive, coco, debian, folder, synthetic  # noqa: F401
