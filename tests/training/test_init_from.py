"""init_from=hf:DIR: the run takes the directory's architecture and tokenizer, and its weights exactly."""

import pytest
import torch

from moe_lm.cli import compose
from moe_lm.config import ConfigError
from moe_lm.data.bpe import SPECIAL_TOKENS, tokenizer_hash, train_bpe
from moe_lm.io.hf_dir import write_hf_dir
from moe_lm.model import MoETransformer
from moe_lm.training.init_from import load_init_weights, resolve_init

LINES = ["the quick brown fox jumps over the lazy dog", "sphinx of black quartz, judge my vow"] * 20


def test_the_run_takes_the_directorys_architecture_tokenizer_and_weights(tmp_path, make_model_cfg, capsys):
    tok = train_bpe(LINES, 300, SPECIAL_TOKENS)
    source = make_model_cfg(vocab_size=tok.get_vocab_size(), scoring="sigmoid", first_k_dense=1, max_seq_len=256)
    model = MoETransformer(source)
    write_hf_dir(model, source, tok, tmp_path / "hf", "card")
    run = compose(["+experiment=overfit_100_lines", f"init_from=hf:{tmp_path / 'hf'}", "model.aux_loss_coef=0.05"])
    cfg, init_tok = resolve_init(run)
    assert "model.d_model=512->64" in capsys.readouterr().out
    for field in ("d_model", "n_layers", "scoring", "first_k_dense", "vocab_size", "q_lora_rank", "v_head_dim"):
        assert getattr(cfg.model, field) == getattr(source, field), field
    assert cfg.model.aux_loss_coef == 0.05  # a training-only key stays the run's
    assert tokenizer_hash(init_tok) == tokenizer_hash(tok)
    fresh = MoETransformer(cfg.model)
    load_init_weights(fresh, cfg)
    for name, t in model.state_dict().items():
        if not name.endswith("tokens_per_expert"):
            assert torch.equal(fresh.state_dict()[name], t), name


def test_a_directory_that_is_not_a_model_is_named(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="init_from: .* not a model directory"):
        resolve_init(compose(["+experiment=overfit_100_lines", f"init_from=hf:{tmp_path / 'empty'}"]))
    with pytest.raises(ConfigError, match="init_from"):
        compose(["+experiment=overfit_100_lines", f"init_from={tmp_path}"])  # no hf: prefix
