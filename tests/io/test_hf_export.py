"""The exported directory in transformers: loads without warnings, the same logits, the same greedy tokens, the
same token ids and chat prompts; moe_lm reads it back exactly; bad input writes nothing."""

import json
import os

import pytest
import torch

from moe_lm.config import ConfigError, SamplingConfig, resources_dir
from moe_lm.data.bpe import EOT, SPECIAL_TOKENS, chat_text, load_tokenizer, train_bpe
from moe_lm.data.formatters import ROLE_TOKENS
from moe_lm.data.text_lines import read_lines
from moe_lm.inference.decode import generate_ids
from moe_lm.io.hf_dir import load_hf_dir, write_hf_dir
from moe_lm.model import MoETransformer


transformers = pytest.importorskip("transformers", reason="transformers is a test extra: pip install -e '.[dev]'")

LINES = read_lines(resources_dir() / "overfit_100_lines.txt")


def briefly_trained(cfg, tok, steps=25) -> MoETransformer:
    """Some AdamW steps on the demo lines: real text, a selection bias that moved."""
    torch.manual_seed(0)
    model = MoETransformer(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    ids = torch.tensor([t for line in LINES for t in [0] + tok.encode(line).ids][:steps * 4 * 33]).view(-1, 33)
    for batch in ids.split(4):
        out = model(batch[:, :-1], targets=batch[:, 1:])
        (out.ce_sum / batch[:, 1:].numel() + out.aux_loss).backward()
        opt.step()
        opt.zero_grad()
        model.update_router_biases()
    return model.eval()


@pytest.fixture(scope="module")
def chat_tok():
    return train_bpe(LINES, 600, SPECIAL_TOKENS + list(ROLE_TOKENS.values()))


@pytest.fixture(scope="module")
def exported(tmp_path_factory, chat_tok):
    from tests.conftest import tiny_model_config

    cfg = tiny_model_config(vocab_size=chat_tok.get_vocab_size(), scoring="sigmoid", max_seq_len=256,
                            use_aux_free_bias=True, norm_topk_prob=True, routed_scaling_factor=1.5)
    model = briefly_trained(cfg, chat_tok)
    out = tmp_path_factory.mktemp("export") / "tiny"
    write_hf_dir(model, cfg, chat_tok, out, "# card\n")
    return model, out


def test_transformers_loads_the_directory_without_missing_or_unexpected_keys(exported):
    model, out = exported
    assert sorted(os.listdir(out)) == ["README.md", "config.json", "generation_config.json", "model.safetensors",
                                       "tokenizer.json", "tokenizer_config.json"]
    hf, info = transformers.AutoModelForCausalLM.from_pretrained(out, output_loading_info=True)
    assert type(hf).__name__ == "DeepseekV3ForCausalLM"
    assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys", "error_msgs"))
    assert hf.lm_head.weight.data_ptr() == hf.model.embed_tokens.weight.data_ptr()  # tied, as trained


def test_logits_match_on_random_ids_and_real_text(exported, chat_tok):
    model, out = exported
    hf = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    text = torch.tensor([[0] + chat_tok.encode(" ".join(LINES[:3])).ids[:120]])
    rand = torch.randint(0, model.cfg.vocab_size, (3, 40))
    with torch.no_grad():
        for x in (rand, text):
            torch.testing.assert_close(hf(x).logits, model(x).logits, atol=1e-4, rtol=1e-4)


def test_greedy_generation_matches_token_for_token(exported, chat_tok):
    model, out = exported
    hf = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    eot = chat_tok.token_to_id(EOT)
    for line in LINES[:3]:
        prompt = [eot] + chat_tok.encode(line).ids[:6]
        ours = next(iter(generate_ids(model, [prompt], SamplingConfig(max_new_tokens=32, temperature=0.0))))
        theirs = hf.generate(torch.tensor([prompt]), max_new_tokens=32, min_new_tokens=32, do_sample=False,
                             eos_token_id=None, pad_token_id=eot)[0, len(prompt):].tolist()
        assert ours == theirs


def test_tokenizer_ids_specials_and_chat_template_equal_ours(exported, chat_tok):
    _, out = exported
    hf_tok = transformers.AutoTokenizer.from_pretrained(out)
    eot = chat_tok.token_to_id(EOT)
    assert hf_tok.bos_token_id == hf_tok.eos_token_id == hf_tok.pad_token_id == eot
    for line in LINES + ["  two  spaces, tabs\t and\nnewlines ", "ünïcödé 中文 🙂", "a<|user|>b<|assistant|>c"]:
        ids = chat_tok.encode(line).ids
        assert hf_tok(line).input_ids == ids
        assert hf_tok(hf_tok.bos_token + line).input_ids == [eot] + ids  # a prompt as moe_lm.generate starts it
        assert hf_tok.decode(ids) == line
    for role, token in ROLE_TOKENS.items():
        assert hf_tok.convert_tokens_to_ids(token) == chat_tok.token_to_id(token)
    messages = [("system", "be brief"), ("user", "hi there"), ("assistant", "hello"), ("user", "2+2?")]
    hf_ids = hf_tok.apply_chat_template([{"role": r, "content": c} for r, c in messages], add_generation_prompt=True,
                                        tokenize=True, return_dict=True)["input_ids"]
    assert hf_ids == [eot] + chat_tok.encode(chat_text(messages, chat_tok)).ids
    generation = json.loads((out / "generation_config.json").read_text())
    assert generation["eos_token_id"] == [eot, chat_tok.token_to_id("<|user|>")]  # a reply ends at the next turn


def test_plain_tokenizers_get_the_plain_chat_template(tmp_path, make_model_cfg):
    tok = train_bpe(LINES, 400)
    cfg = make_model_cfg(vocab_size=tok.get_vocab_size(), scoring="sigmoid")
    write_hf_dir(MoETransformer(cfg), cfg, tok, tmp_path / "plain", "card")
    hf_tok = transformers.AutoTokenizer.from_pretrained(tmp_path / "plain")
    messages = [("user", "hi"), ("assistant", "hello"), ("user", "and?")]
    text = hf_tok.apply_chat_template([{"role": r, "content": c} for r, c in messages], add_generation_prompt=True,
                                      tokenize=False)
    assert text == EOT + chat_text(messages, tok) and "User: hi\n" in text


@pytest.mark.parametrize("every", [10, pytest.param(1, marks=pytest.mark.slow)])
def test_every_shared_record_round_trips_through_auto_tokenizer(every, shared_data, tmp_path, make_model_cfg):
    """All ~40k formatted records of ../shared/data in the slow tier (about a minute), every 10th in the fast one."""
    from moe_lm.cli import compose
    from moe_lm.data.bpe import domain_documents

    data = compose(["data=domains", f"paths.data_root={shared_data}", "data.source=local"]).data
    docs = [d for name in data.domains for d in domain_documents(data, name, 10**9)]
    tok = train_bpe(docs[::20], 2000, SPECIAL_TOKENS + list(ROLE_TOKENS.values()))
    docs = docs[::every]
    cfg = make_model_cfg(vocab_size=tok.get_vocab_size(), scoring="sigmoid")
    write_hf_dir(MoETransformer(cfg), cfg, tok, tmp_path / "d", "card")
    hf_tok = transformers.AutoTokenizer.from_pretrained(tmp_path / "d")
    ours = [e.ids for e in tok.encode_batch_fast(docs)]
    theirs = hf_tok(docs).input_ids
    assert len(docs) > 40_000 // every and theirs == ours
    assert hf_tok.batch_decode(theirs) == docs


def test_export_import_export_is_byte_identical(exported, chat_tok, tmp_path):
    model, out = exported
    back, tok, cfg = load_hf_dir(out)
    for name, t in model.state_dict().items():
        if not name.endswith("tokens_per_expert"):
            assert torch.equal(back.state_dict()[name], t), name
    write_hf_dir(back, cfg, tok, tmp_path / "again", "# card\n")
    for name in ("model.safetensors", "config.json", "tokenizer.json", "tokenizer_config.json",
                 "generation_config.json"):
        assert (tmp_path / "again" / name).read_bytes() == (out / name).read_bytes(), name
    assert load_tokenizer(out / "tokenizer.json").to_str() == chat_tok.to_str()


def test_large_weights_are_sharded_with_an_index(exported, tmp_path):
    model, _ = exported
    back, tok, cfg = load_hf_dir(exported[1])
    write_hf_dir(back, cfg, tok, tmp_path / "sharded", "card", max_shard_bytes=100_000)
    index = json.loads((tmp_path / "sharded" / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1
    hf, info = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "sharded", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    x = torch.randint(0, cfg.vocab_size, (1, 20))
    with torch.no_grad():
        torch.testing.assert_close(hf(x).logits, model(x).logits, atol=1e-4, rtol=1e-4)
    again, _, _ = load_hf_dir(tmp_path / "sharded")
    assert all(torch.equal(again.state_dict()[k], v) for k, v in back.state_dict().items())


@pytest.mark.parametrize("where", ["../outside/model-00001-of-00002.safetensors", "ABS"])
def test_a_weight_index_naming_files_outside_the_directory_is_refused(exported, tmp_path, where):
    back, tok, cfg = load_hf_dir(exported[1])
    write_hf_dir(back, cfg, tok, tmp_path / "sharded", "card", max_shard_bytes=100_000)
    index_path = tmp_path / "sharded" / "model.safetensors.index.json"
    index = json.loads(index_path.read_text())
    first = sorted(set(index["weight_map"].values()))[0]
    (tmp_path / "outside").mkdir()
    os.replace(tmp_path / "sharded" / first, tmp_path / "outside" / first)  # a real file, there to be read
    target = str(tmp_path / "outside" / first) if where == "ABS" else f"../outside/{first}"
    index["weight_map"] = {k: target if v == first else v for k, v in index["weight_map"].items()}
    index_path.write_text(json.dumps(index))
    with pytest.raises(ConfigError, match=r"model.safetensors.index.json: the weight file .* is outside the model "
                                          r"directory"):
        load_hf_dir(tmp_path / "sharded")


@pytest.mark.parametrize("kind", ["DeepseekV3", "DeepseekV2"])
def test_an_hf_initialised_deepseek_imports_with_its_logits(kind, tmp_path, make_model_cfg):
    from moe_lm.model.hf_mapping import hf_config_kwargs

    scoring = "sigmoid" if kind == "DeepseekV3" else "softmax"
    kw = hf_config_kwargs(make_model_cfg(scoring=scoring, norm_topk_prob=False, use_aux_free_bias=False,
                                         first_k_dense=1, tie_embeddings=False))
    torch.manual_seed(1)
    hf = getattr(transformers, f"{kind}ForCausalLM")(getattr(transformers, f"{kind}Config")(**kw)).eval()
    if kind == "DeepseekV3":
        hf.model.layers[1].mlp.gate.e_score_correction_bias.normal_(0, 0.05)
    hf.save_pretrained(tmp_path / "hf")
    model, tok, cfg = load_hf_dir(tmp_path / "hf")
    assert tok is None and cfg.scoring == scoring and cfg.use_aux_free_bias == (kind == "DeepseekV3")
    x = torch.randint(0, cfg.vocab_size, (2, 17))
    with torch.no_grad():
        torch.testing.assert_close(model(x).logits, hf(x).logits, atol=1e-5, rtol=1e-5)


def test_refusals_name_the_key_and_write_nothing(tmp_path, chat_tok, make_model_cfg, monkeypatch):
    import moe_lm.io.hf_dir as hf_dir

    softmax = make_model_cfg(vocab_size=chat_tok.get_vocab_size(), scoring="softmax")  # normalised, with the bias
    with pytest.raises(ConfigError, match="model.norm_topk_prob"):
        write_hf_dir(MoETransformer(softmax), softmax, chat_tok, tmp_path / "a", "card")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("mine")
    cfg = make_model_cfg(vocab_size=chat_tok.get_vocab_size(), scoring="sigmoid")
    with pytest.raises(ConfigError, match="out: .* not an empty directory"):
        write_hf_dir(MoETransformer(cfg), cfg, chat_tok, tmp_path / "full", "card")

    def disk_full(*args):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(hf_dir, "write_weights", disk_full)
    with pytest.raises(OSError):
        write_hf_dir(MoETransformer(cfg), cfg, chat_tok, tmp_path / "b", "card")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["full"]  # no directory, no temporary left behind
    assert [p.name for p in (tmp_path / "full").iterdir()] == ["keep.txt"]
    (tmp_path / "llama").mkdir()
    (tmp_path / "llama" / "config.json").write_text(json.dumps({"model_type": "llama"}))
    with pytest.raises(ConfigError, match="model_type 'llama'"):
        load_hf_dir(tmp_path / "llama")


@pytest.mark.slow
def test_moe_100m_exports_exactly(tmp_path, chat_tok):
    """The full-size config (random weights, a moved bias): from_pretrained's logits equal ours to 1e-4."""
    from moe_lm.cli import compose

    cfg = compose(["model=moe_100m", "model.scoring=sigmoid"]).model  # 32k vocab; the text uses the first 600 ids
    torch.manual_seed(0)
    model = MoETransformer(cfg).eval()
    for moe in model.moe_layers():
        moe.gate.e_score_correction_bias.normal_(0, 0.05)
    write_hf_dir(model, cfg, chat_tok, tmp_path / "m", "card")
    hf, info = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "m", output_loading_info=True)
    assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys", "error_msgs"))
    text = torch.tensor([[0] + chat_tok.encode(" ".join(LINES[:4])).ids[:200]])
    with torch.no_grad():
        for x in (torch.randint(0, cfg.vocab_size, (2, 64)), text):
            torch.testing.assert_close(hf.eval()(x).logits, model(x).logits, atol=1e-4, rtol=1e-4)


def test_bfloat16_export_holds_the_rounded_weights(exported, tmp_path):
    model, out = exported
    back, tok, cfg = load_hf_dir(out)
    write_hf_dir(back, cfg, tok, tmp_path / "bf16", "card", dtype="bfloat16")
    assert json.loads((tmp_path / "bf16" / "config.json").read_text())["torch_dtype"] == "bfloat16"
    assert (tmp_path / "bf16" / "model.safetensors").stat().st_size < 0.6 * (out / "model.safetensors").stat().st_size
    rounded, _, _ = load_hf_dir(tmp_path / "bf16")
    for name, t in model.state_dict().items():
        if not name.endswith("tokens_per_expert"):
            assert torch.equal(rounded.state_dict()[name], t.to(torch.bfloat16).float()), name
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "bf16")
    assert hf.dtype == torch.bfloat16
