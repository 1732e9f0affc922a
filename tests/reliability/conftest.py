"""Fixtures of the reliability tables (the mask_rcnn_tiny artifact is tests/conftest.py's)."""
import pytest


@pytest.fixture(scope="session")
def structured_artifact(tmp_path_factory):
    """A structured (non-detector) artifact: factories.structured, a conv on one tensor."""
    from dexport.cli import main
    out = tmp_path_factory.mktemp("structured") / "conv"
    assert main(["export", "--model", "tests.reliability.factories:structured", "--output", str(out)]) == 0
    return out
