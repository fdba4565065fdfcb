"""Shared by the distributed tests: a small synthetic MNIST-format data set."""

import pytest

from dlsys.testing.synthetic import write_idx_dataset


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return write_idx_dataset(tmp_path_factory.mktemp("data"), num_train=300, num_test=60)
