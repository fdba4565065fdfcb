"""Kernel tests never touch the user's kernel cache: each test gets an empty cache folder and
the disk cache off (exporting a library doubles a compile's cost); the cache's own tests turn
it back on."""

import pytest


@pytest.fixture(autouse=True)
def _private_kernel_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("DLSYS_CACHE_DIR", str(tmp_path_factory.mktemp("kernel-cache")))
    monkeypatch.setenv("DLSYS_DISK_CACHE", "0")
    monkeypatch.delenv("DLSYS_SCHEDULE", raising=False)
