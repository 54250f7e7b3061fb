from pathlib import Path

import pytest

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "data"


@pytest.fixture
def fixtures() -> Path:
    """Small hand-written source files."""
    return FIXTURES


@pytest.fixture
def logs() -> list[str]:
    """Pass `log=logs.append` to keep a function's messages for asserts."""
    return []
