from pathlib import Path

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


def test_every_schema_key_has_a_yaml_default_in_conf():
    """`--cfg job` shows every setting: each group's default YAML names every key of its schema."""
    import dataclasses

    from omegaconf import OmegaConf

    from moe_lm.cli import conf_dir
    from moe_lm.config import DATA_SCHEMAS, SCHEMAS, TrainConfig

    conf = conf_dir()
    defaults = [d for d in OmegaConf.load(conf / "config.yaml").defaults if isinstance(d, dict) or hasattr(d, "items")]
    groups = {k: v for d in defaults for k, v in d.items()}
    fields = {f.name: f for f in dataclasses.fields(TrainConfig)}
    for group, option in groups.items():
        schema = fields[group].default_factory() if group != "data" else DATA_SCHEMAS["lines_schema"]
        yaml = OmegaConf.load(conf / group / f"{option}.yaml")
        missing = {f.name for f in dataclasses.fields(schema)} - set(yaml) - {"defaults"}
        assert not missing, f"conf/{group}/{option}.yaml lacks {sorted(missing)}"
    domains = OmegaConf.load(conf / "data" / "domains.yaml")
    missing = {f.name for f in dataclasses.fields(DATA_SCHEMAS["domains_schema"])} - set(domains)
    assert not missing, f"conf/data/domains.yaml lacks {sorted(missing)}"
    for name in ("generate", "inspect", "report", "plan"):
        yaml = OmegaConf.load(conf / f"{name}.yaml")
        from_groups = {k for d in yaml.get("defaults", []) if not isinstance(d, str) for k in d}  # e.g. plan's model
        missing = {f.name for f in dataclasses.fields(SCHEMAS[f"{name}_schema"])} - set(yaml) - from_groups
        assert not missing, f"conf/{name}.yaml lacks {sorted(missing)}"


def test_precision_auto_composes_and_resolves():
    cfg = compose(["precision=auto"])
    assert cfg.precision.name == "auto" and cfg.precision.lightning in ("bf16-mixed", "16-mixed")


def test_data_groups_pick_their_schema():
    from moe_lm.config import DomainsDataConfig, LinesDataConfig

    lines, domains = compose(), compose(["data=domains"])
    assert isinstance(lines.data, LinesDataConfig) and isinstance(domains.data, DomainsDataConfig)
    assert lines.data.path.endswith("moe_lm/resources/overfit_100_lines.txt") and lines.data.path.startswith("/")
    with pytest.raises(ConfigCompositionException):  # a key of the other pipeline is an unknown key
        compose(["data.round_robin_steps=3"])


def test_an_appended_key_no_schema_declares_fails_naming_it():
    with pytest.raises(ConfigError, match=r"trainer\.nodes"):  # `+` lets Hydra add it; nothing would read it
        compose(["+trainer.nodes=2"])


ARCH_ARMS = sorted(p.stem for p in (Path(__file__).resolve().parents[1] / "conf" / "arch").glob("*.yaml"))


@pytest.mark.parametrize("arm", ARCH_ARMS)
def test_every_architecture_arm_composes_and_changes_one_thing(arm):
    cfg = compose(["+experiment=architecture_ablation", f"+arch={arm}"])
    label = cfg.model.switches()
    assert (label == "baseline") == (arm == "baseline"), label
    assert cfg.model.name == "moe_small" and cfg.trainer.max_steps == 200


def test_switches_compose_from_the_command_line():
    cfg = compose(["model.activation=learned_gelu", "model.qk_norm=true", "model.sliding_window=128",
                   "model.window_pattern=LLLG", "model.router_type=hash", "model.mtp_depth=1",
                   "model.aux_loss_scope=sequence", "model.logit_softcap=30", "model.attn_softcap=50",
                   "model.output_z_loss_coef=1e-4"])
    assert [cfg.model.window_of(i) for i in range(4)] == [128, 128, 128, 0]
    assert cfg.model.switches().count("=") == 10
