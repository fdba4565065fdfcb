"""Optimiser tests build kernels: like the kernel tests, each gets an empty cache folder with
the disk cache off, so the user's cache is never touched and compiles can be counted."""

import pytest


@pytest.fixture(autouse=True)
def _private_kernel_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("DLSYS_CACHE_DIR", str(tmp_path_factory.mktemp("kernel-cache")))
    monkeypatch.setenv("DLSYS_DISK_CACHE", "0")
    monkeypatch.delenv("DLSYS_SCHEDULE", raising=False)
