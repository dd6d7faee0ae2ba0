import math

import pytest

from moe_lm.config import SchedulerConfig
from moe_lm.training.schedule import lr_multiplier


def test_cosine_warmup_then_decay_to_min():
    cfg = SchedulerConfig(name="cosine", warmup_steps=10, min_lr_ratio=0.1)
    assert lr_multiplier(0, cfg, 110) == pytest.approx(0.1)
    assert lr_multiplier(9, cfg, 110) == pytest.approx(1.0)
    assert lr_multiplier(60, cfg, 110) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert lr_multiplier(110, cfg, 110) == pytest.approx(0.1)


def test_wsd_is_flat_then_linear_decay():
    cfg = SchedulerConfig(name="wsd", warmup_steps=0, min_lr_ratio=0.0, decay_fraction=0.2)
    assert lr_multiplier(0, cfg, 100) == 1.0 and lr_multiplier(79, cfg, 100) == 1.0
    assert lr_multiplier(90, cfg, 100) == pytest.approx(0.5)
    assert lr_multiplier(100, cfg, 100) == pytest.approx(0.0)


def test_constant_after_warmup():
    cfg = SchedulerConfig(name="constant", warmup_steps=4)
    assert [lr_multiplier(s, cfg, 50) for s in (0, 3, 4, 49)] == [0.25, 1.0, 1.0, 1.0]
