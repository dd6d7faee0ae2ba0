"""The main demo, end to end (about 9 minutes on a 2-core CPU): `make test-full` runs it."""

import sys
from pathlib import Path

import pytest

from moe_lm.conf_utils import compose
from moe_lm.data.text_lines import encode_lines, pack_lines, read_lines
from moe_lm.data.tokenizer import train_bpe
from moe_lm.run import train

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "experiments"))
from overfit_loss_floor import per_line_floor  # noqa: E402


@pytest.mark.slow
def test_overfit_100_lines_memorises_and_reproduces(tmp_path):
    cfg = compose(["+experiment=overfit_100_lines", "trainer.progress_bar=false", f"out_dir={tmp_path}"])
    assert cfg.model.name == "moe_100m" and cfg.precision.name == "bf16" and cfg.data.sampling == "packed"
    result = train(cfg, tmp_path)
    lines = read_lines(cfg.data.path)
    samples = encode_lines(lines, train_bpe(lines, cfg.data.tokenizer_vocab_size), cfg.data.seq_len)
    floor = per_line_floor(pack_lines(samples, cfg.data.seq_len + 1, samples[0][0]))
    assert result["train_loss_full_pass"] <= floor + 0.05  # within 0.05 nats of the best any model can do
    assert result["reproduced"] >= 9
    assert (tmp_path / "loss_curve.png").exists() and (tmp_path / "checkpoints" / "final.ckpt").exists()
