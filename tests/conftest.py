import pathlib
import sys

import pytest

REFERENCE_DIR = pathlib.Path(__file__).parent / "reference"
sys.path.insert(0, str(REFERENCE_DIR))


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "slow: takes more than a few seconds")
