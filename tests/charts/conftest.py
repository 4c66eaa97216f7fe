from __future__ import annotations

import pytest

from infra.config import StackConfig
from tests.charts.rendering import load_prod


@pytest.fixture(scope="session")
def prod() -> StackConfig:
    return load_prod()
