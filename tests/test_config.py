import pytest
from hydra.errors import ConfigCompositionException

from moe_lm.config import ConfigError
from moe_lm.cli import compose


def test_default_config_composes_to_typed_schema():
    cfg = compose()
    assert cfg.model.name == "moe_100m" and cfg.model.n_routed_experts == 5
    assert cfg.precision.lightning == "bf16-mixed"


@pytest.mark.parametrize("override,key", [
    ("model.n_kv_heads=3", "model.n_kv_heads"),
    ("model.top_k=6", "model.top_k"),
    ("model.qk_rope_head_dim=7", "model.qk_rope_head_dim"),
    ("data.seq_len=4096", "data.seq_len"),
    ("model.scoring=relu", "model.scoring"),
    ("scheduler.name=linear", "scheduler.name"),
    ("optimizer.betas=[0.9]", "optimizer.betas"),
])
def test_impossible_config_names_the_key(override, key):
    extra = ["model.attention=gqa"] if "n_kv_heads" in override else []
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        compose([override, *extra])


def test_unknown_key_fails_at_compose_time_naming_it():
    with pytest.raises(ConfigCompositionException) as err:
        compose(["model.n_expertz=4"])
    assert "n_expertz" in str(err.value) + str(err.value.__cause__)


def test_wrong_type_fails_at_compose_time():
    with pytest.raises(ConfigCompositionException) as err:
        compose(["model.d_model=wide"])
    assert "d_model" in str(err.value) + str(err.value.__cause__)
