"""Keeps the image-check cache of the data tests in tmp_path rather than the user's cache."""

import pytest


@pytest.fixture(autouse=True)
def _scan_cache_in_tmp(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg-cache"))
