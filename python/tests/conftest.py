"""Fixtures of the mmca Python tests.

Run from CTest (`ctest -L python`) or by hand with the build tree on the path:
    PYTHONPATH=build-py/python /usr/bin/python3 -m pytest -q python/tests
"""

import numpy as np
import pytest

try:
    import mmca  # noqa: F401
except ImportError as error:  # a set-up problem, not a test failure
    raise ImportError(
        "mmca is not importable: build the extension (cmake --build <build> --target _core) and set "
        "PYTHONPATH=<build>/python, or pip install the package"
    ) from error

import sample_data


@pytest.fixture
def rng():
    return np.random.default_rng(20230926)


@pytest.fixture
def batch():
    return sample_data.make_batch()


@pytest.fixture
def qkv(rng):
    return sample_data.random_qkv(rng)
