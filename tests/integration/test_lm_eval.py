"""lm-evaluation-harness (the `[eval]` extra) on an exported directory with the shipped local task: it runs offline
and its bits per byte are the ones moe_lm computes itself for the same documents."""

import json
import math

import pytest
import torch

from moe_lm.config import resources_dir

lm_eval = pytest.importorskip("lm_eval", reason="lm-evaluation-harness is the [eval] extra: pip install -e '.[eval]'")
pytest.importorskip("accelerate", reason="lm-eval's HF backend needs accelerate: pip install -e '.[eval]'")

TASKS = resources_dir() / "lm_eval"


@pytest.mark.slow
def test_simple_evaluate_on_an_exported_model_matches_our_bits_per_byte(tmp_path):
    from lm_eval.tasks import TaskManager

    from moe_lm.data.bpe import SPECIAL_TOKENS, train_bpe
    from moe_lm.data.formatters import ROLE_TOKENS
    from moe_lm.io.hf_dir import write_hf_dir
    from tests.conftest import tiny_model_config
    from tests.inference.test_hf_export import LINES, briefly_trained

    tok = train_bpe(LINES, 600, SPECIAL_TOKENS + list(ROLE_TOKENS.values()))
    cfg = tiny_model_config(vocab_size=tok.get_vocab_size(), scoring="sigmoid", max_seq_len=4096)
    model = briefly_trained(cfg, tok)
    write_hf_dir(model, cfg, tok, tmp_path / "tiny", "card")
    limit = 5
    out = lm_eval.simple_evaluate(model="hf", model_args=f"pretrained={tmp_path / 'tiny'},dtype=float32",
                                  tasks=["moe_lm_domains"], task_manager=TaskManager(include_path=str(TASKS)),
                                  limit=limit, batch_size=1, device="cpu")["results"]
    rows = [json.loads(line) for line in (TASKS / "moe_lm_domains.jsonl").read_text().splitlines()]
    for domain in ("math", "code", "chat"):
        docs = [r["text"] for r in rows if r["domain"] == domain][:limit]
        nll = 0.0
        with torch.no_grad():
            for doc in docs:  # every document in one window after <|endoftext|>, as the harness's rolling score
                ids = torch.tensor([[0] + tok.encode(doc).ids])
                logp = model(ids).logits[0, :-1].log_softmax(-1)
                nll -= logp.gather(-1, ids[0, 1:, None]).sum().item()
        ours = nll / math.log(2) / sum(len(d.encode()) for d in docs)
        assert out[f"moe_lm_{domain}"]["bits_per_byte,none"] == pytest.approx(ours, rel=1e-4)
    assert 0 < out["moe_lm_domains"]["bits_per_byte,none"] < 16
