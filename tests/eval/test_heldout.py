"""`moe_lm.evaluate`: sliding-window scoring that predicts every token once, bits per byte from the evaluated text's
UTF-8 bytes, routing per domain, GSM8K exact match, and named errors for bad input."""

import json
import math

import pytest
import torch

from moe_lm.eval.gsm8k import extract, normalise, wilson
from moe_lm.eval.heldout import score_stream, windows
from moe_lm.evaluate import cli
from moe_lm.model import MoETransformer


@pytest.mark.parametrize("n,context,stride", [(2, 8, 4), (10, 4, 2), (37, 8, 3), (64, 16, 16), (5, 16, 8), (9, 2, 1)])
def test_every_target_is_scored_exactly_once(n, context, stride):
    scored = []
    for begin, end, first in windows(n, context, stride):
        assert end - begin <= context and begin < first <= end
        scored += range(first, end)
        if first > begin + 1:  # after the first window, every scored token sees >= context - stride tokens
            assert first - begin >= min(context - stride, first)
    assert scored == list(range(1, n))


def test_sliding_windows_equal_the_full_forward_when_one_window_fits(make_model_cfg):
    torch.manual_seed(0)
    model = MoETransformer(make_model_cfg(max_seq_len=64)).eval()
    ids = torch.randint(0, model.cfg.vocab_size, (40,)).tolist()
    with torch.no_grad():
        logits = model(torch.tensor([ids[:-1]])).logits[0]
    full = float(torch.nn.functional.cross_entropy(logits, torch.tensor(ids[1:]), reduction="sum"))
    one = score_stream(model, ids, context=64, stride=32, batch_size=4)
    assert one["tokens"] == 39 and one["nll"] == pytest.approx(full, rel=1e-5)
    slid = score_stream(model, ids, context=16, stride=8, batch_size=3)
    assert slid["tokens"] == 39 and slid["nll"] != pytest.approx(full, rel=1e-6)  # less context, other losses
    assert int(one["counts"].sum()) == 39 * model.cfg.top_k * len(model.moe_layers())  # scored tokens routed once


def test_evaluate_reports_bits_per_byte_of_the_exact_text_and_routing(tiny_ckpt, shared_data, tmp_path):
    cli([f"ckpt={tiny_ckpt}", f"data.local_root={shared_data}", "data.domains=[math,chat]", "data.max_documents=2",
         "context=64", f"out={tmp_path}"])
    report = json.loads((tmp_path / "eval.json").read_text())
    math_row = report["domains"][0]
    from moe_lm.data.formatters import gsm8k

    lines = (shared_data / "math" / "gsm8k.train.jsonl").read_text(encoding="utf-8").splitlines()[:2]
    text_bytes = sum(len(gsm8k(json.loads(ln)).encode("utf-8")) for ln in lines)  # gsm8k is the first math source
    assert math_row["domain"] == "math" and math_row["documents"] == 2 and math_row["bytes"] == text_bytes
    assert math_row["bpb"] == pytest.approx(math_row["nll_nats"] / math.log(2) / text_bytes)
    assert math_row["ppl"] == pytest.approx(math.exp(math_row["loss"]))
    assert report["overall"]["tokens"] == sum(r["tokens"] for r in report["domains"])
    assert len(report["routing"]["shares"]) == 2 and "own_share" in report["routing"]["specialisation"]
    assert (tmp_path / "routing_heatmap.png").stat().st_size > 1000 and "| math | 2 |" in (tmp_path / "eval.md").read_text()


def test_bad_input_is_named_or_counted(tiny_ckpt, tmp_path, capsys):
    def error(*args):
        with pytest.raises(SystemExit) as done:
            cli([f"ckpt={tiny_ckpt}", f"out={tmp_path}/out", *args])
        assert done.value.code == 2
        return capsys.readouterr().err

    (tmp_path / "nothing").mkdir()
    assert "error: data.local_root: no known file under" in error(f"data.local_root={tmp_path}/nothing")
    root = tmp_path / "data"
    (root / "math").mkdir(parents=True)
    (root / "math" / "gsm8k.train.jsonl").write_text("")  # empty
    (root / "chat").mkdir()
    (root / "chat" / "oasst1.train.jsonl").write_text('{"message_id": "a"\n[1, 2]\n')  # malformed records
    err = error(f"data.local_root={root}")  # nothing to score is an error, never a loss of 0 and perplexity 1
    assert f"error: data.local_root: {root} gives no text to score (" in err
    assert "math: 0 documents from ['math/gsm8k.train.jsonl'], skipped none" in err
    assert "chat: 0 documents from ['chat/oasst1.train.jsonl'], skipped {'bad JSON': 1, 'record is not a JSON object': 1}" in err
    assert not (tmp_path / "out" / "eval.json").exists()
    ckpt = torch.load(tiny_ckpt, weights_only=True)
    del ckpt["tokenizer_json"]
    torch.save(ckpt, tmp_path / "notok.ckpt")
    with pytest.raises(SystemExit):
        cli([f"ckpt={tmp_path / 'notok.ckpt'}", f"data.local_root={root}"])
    assert "error: ckpt: " in capsys.readouterr().err
    assert "error: data.local_root: task=lm reads one of data.local_root" in error()
    assert "error: context: 4096 must be in [2, 256]" in error(f"data.local_root={root}", "context=4096")


def test_gsm8k_answer_extraction_and_interval():
    assert normalise("1,234.50") == "1234.5" and normalise("$-3") == "-3" and normalise("+7.0") == "7"
    assert normalise("-0") == "0" and normalise("12.") == "12"
    assert extract("so 3 + 4 = 7 apples.\n#### 7") == ("7", "####")
    assert extract("They pay $1,200.00 in total") == ("1200", "last number")
    assert extract("no idea") == (None, "none")
    lo, hi = wilson(0, 10)
    assert lo == 0.0 and hi == pytest.approx(0.2775, abs=1e-3)
    lo, hi = wilson(50, 100)
    assert (lo, hi) == (pytest.approx(0.4038, abs=1e-3), pytest.approx(0.5962, abs=1e-3))


def test_gsm8k_task_end_to_end_on_hand_made_records(tiny_ckpt, tmp_path, capsys):
    records = [{"question": "Tom has 3 apples\u2028and buys 4 more. How many?", "answer": "3 + 4 = <<3+4=7>>7\n#### 7"},
               {"question": "What is 10\u2029times 2?", "answer": "#### 20"},
               {"question": "Half of 1,000?", "answer": "#### 500"}]
    (tmp_path / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records) + '{"question": 1}\n')
    (tmp_path / "train.jsonl").write_text(json.dumps({"question": "1 + 1?", "answer": "#### 2"}) + "\n")
    cli([f"ckpt={tiny_ckpt}", "task=gsm8k", f"data.file={tmp_path}/test.jsonl", f"data.shots_file={tmp_path}/train.jsonl",
         "shots=1", "max_new_tokens=6", f"out={tmp_path}/out"])
    report = json.loads((tmp_path / "out" / "eval.json").read_text())
    preds = [json.loads(ln) for ln in (tmp_path / "out" / "predictions.jsonl").read_text().splitlines()]
    assert report["n"] == 3 and len(preds) == 3 and report["shots"] == 1
    assert [p["reference"] for p in preds] == ["7", "20", "500"]
    assert [p["question"] for p in preds] == [r["question"] for r in records]  # separators stay inside the field
    assert report["skipped"] == {"missing field 'question' or 'answer'": 1}
    lo, hi = report["ci95"]
    assert report["accuracy"] == sum(p["correct"] for p in preds) / 3 and lo <= report["accuracy"] <= hi
    assert "gsm8k 1-shot:" in capsys.readouterr().out


def test_evaluate_reads_the_val_split_of_prepared_shards_and_lists_expert_vocabularies(tiny_ckpt, tmp_path, capsys,
                                                                                      monkeypatch):
    """data.shards: the val tokens themselves are scored (the same loss as the text they came from), refused
    when made with another tokenizer; the vocabulary view counts every routed slot once per layer; the heatmap's
    axis names what was scored."""
    import numpy as np

    from moe_lm.eval import plots

    drawn = []
    heatmap = plots.matrix_heatmap
    monkeypatch.setattr(plots, "matrix_heatmap", lambda *a, **k: drawn.append(k) or heatmap(*a, **k))

    from moe_lm.data.bpe import tokenizer_hash
    from moe_lm.io.checkpoint import load_model

    model, tok, _ = load_model(str(tiny_ckpt), "cpu")
    ids = tok.encode("the quick brown fox. Question: what is 2 plus 2? Answer: 4 #### 4").ids * 3
    for name, h in (("math", tokenizer_hash(tok)), ("code", tokenizer_hash(tok))):
        (tmp_path / "shards" / name).mkdir(parents=True)
        np.array(ids, dtype=np.uint16).tofile(tmp_path / "shards" / name / "val.bin")
        (tmp_path / "shards" / name / "meta.json").write_text(json.dumps(
            {"dtype": "uint16", "tokenizer_hash": h, "documents": {"val": 3}, "tokens": {"val": len(ids)}}))
    cli([f"ckpt={tiny_ckpt}", f"data.shards={tmp_path / 'shards'}", "context=32", "stride=32", "vocab_min_count=1",
         f"out={tmp_path}/out"])
    report = json.loads((tmp_path / "out" / "eval.json").read_text())
    rows = {r["domain"]: r for r in report["domains"]}
    assert rows["math"]["tokens"] == len(ids) - 1 and rows["math"]["bpb"] is None
    assert rows["math"]["loss"] == pytest.approx(rows["code"]["loss"])  # the same tokens
    vocab = report["routing"]["vocabulary"]
    L, K = model.cfg.n_layers - model.cfg.first_k_dense, model.cfg.top_k
    assert len(vocab) == model.cfg.n_routed_experts
    assert sum(t["count"] for e in vocab for t in e) <= 2 * (len(ids) - 1) * L * K
    assert "hit rate" in capsys.readouterr().out
    assert drawn[-1]["ylabel"] == f"domain (the val split of {tmp_path / 'shards'})"  # title and axis agree
    (tmp_path / "shards" / "code" / "meta.json").write_text(json.dumps(
        {"dtype": "uint16", "tokenizer_hash": "0" * 16, "documents": {"val": 3}}))
    with pytest.raises(SystemExit):
        cli([f"ckpt={tiny_ckpt}", f"data.shards={tmp_path / 'shards'}", f"out={tmp_path}/out"])
    assert "error: data.shards: " in capsys.readouterr().err


def test_evaluate_scores_the_held_out_split_when_asked(tiny_ckpt, tmp_path, capsys):
    """data.split=heldout reads heldout.bin (not val.bin), into eval_heldout / knockout_heldout by default;
    without data.shards it is refused."""
    import numpy as np

    from moe_lm.config import EvalDataConfig, EvaluateConfig
    from moe_lm.data.bpe import tokenizer_hash
    from moe_lm.evaluate import out_dir
    from moe_lm.io.checkpoint import load_model

    _, tok, _ = load_model(str(tiny_ckpt), "cpu")
    val, held = tok.encode("the quick brown fox.").ids * 4, tok.encode("Question: what is 2 plus 2?").ids * 5
    (tmp_path / "shards" / "math").mkdir(parents=True)
    np.array(val, dtype=np.uint16).tofile(tmp_path / "shards" / "math" / "val.bin")
    np.array(held, dtype=np.uint16).tofile(tmp_path / "shards" / "math" / "heldout.bin")
    (tmp_path / "shards" / "math" / "meta.json").write_text(json.dumps(
        {"dtype": "uint16", "tokenizer_hash": tokenizer_hash(tok), "heldout": {"fraction": 0.1},
         "documents": {"val": 4, "heldout": 5}, "tokens": {"train": 0, "val": len(val), "heldout": len(held)}}))
    for split, n in (("val", len(val)), ("heldout", len(held))):
        cli([f"ckpt={tiny_ckpt}", f"data.shards={tmp_path / 'shards'}", f"data.split={split}", "context=16",
             "vocab_top=0", f"out={tmp_path}/{split}"])
        report = json.loads((tmp_path / split / "eval.json").read_text())
        assert report["domains"][0]["tokens"] == n - 1 and report["domains"][0]["files"] == [f"math/{split}.bin"]
    cfg = EvaluateConfig(ckpt=str(tiny_ckpt), task="knockout", data=EvalDataConfig(shards="s", split="heldout"))
    assert out_dir(cfg) == tiny_ckpt.parent.parent.resolve() / "knockout_heldout"
    with pytest.raises(SystemExit):
        cli([f"ckpt={tiny_ckpt}", f"data.local_root={tmp_path}", "data.split=heldout"])
    assert "error: data.split: heldout is a split of prepared shards" in capsys.readouterr().err
