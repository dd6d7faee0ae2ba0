"""Fixtures shared by the integration tests."""

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def two_lines_run(tmp_path_factory) -> Path:
    """A directory with lines.txt and run/: moe_tiny (DeepSeek-V3 routing, the default) that memorised two lines,
    one starting with 'Question:'. Shared by the CLI and export tests (training it is their largest cost)."""
    from tests.integration.test_cli import TWO_LINES, run

    tmp = tmp_path_factory.mktemp("cli")
    (tmp / "lines.txt").write_text(TWO_LINES)
    run("train", "+experiment=overfit_100_lines", "model=moe_tiny", "model.vocab_size=2048", "precision=fp32",
        f"data.path={tmp / 'lines.txt'}", "data.sampling=lines", "data.batch_size=2", "optimizer.lr=3e-3",
        "trainer.max_steps=300", "eval.reproduce_lines=2", "trainer.progress_bar=false", "logger.csv=false",
        f"out_dir={tmp}/run", f"hydra.run.dir={tmp}/hydra", check=True)
    return tmp
