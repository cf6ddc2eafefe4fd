"""Session fixtures for the metrics tests (import into tests/conftest.py: `from conftest_metrics import *  # noqa`;
the tests directory is on sys.path under pytest's rootdir-conftest insertion)."""
from __future__ import annotations

import pytest

from fixtures_metrics import NetworkGuard, session_asset_folder


@pytest.fixture(scope="session")
def metric_assets():
    """An asset folder with calibrated random-init Inception and a tiny random CLIP, built once per session."""
    return session_asset_folder()


@pytest.fixture
def no_network(monkeypatch):
    return NetworkGuard(monkeypatch)
