"""Fixtures shared across test packages."""
import pytest


@pytest.fixture(scope="session")
def mask_rcnn_artifact(tmp_path_factory):
    """`dexport export` of the trained mask_rcnn_tiny captured at 64 px, made once for
    every test that reads it (none writes into it)."""
    from dexport.cli import main
    out = tmp_path_factory.mktemp("art") / "mask_rcnn_tiny"
    assert main(["export", "--model", "zoo:mask_rcnn_tiny", "--output", str(out), "--size", "64"]) == 0
    return out
