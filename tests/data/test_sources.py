import pytest

from moe_lm.config import SourceConfig
from moe_lm.data import sources


@pytest.fixture(autouse=True)
def hub_switched_on(monkeypatch):
    """These tests fake the hub (load_dataset is monkeypatched); the suite runs with it switched off."""
    for var in sources.OFFLINE_VARS:
        monkeypatch.delenv(var, raising=False)


def test_offline_mode_fails_at_once_naming_the_variable(monkeypatch):
    import datasets

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **k: pytest.fail("must not try the hub"))
    with pytest.raises(ConnectionError, match="HF_HUB_OFFLINE is set.*data.source=local"):
        list(sources.iter_hub(SourceConfig(hub_id="openai/gsm8k"), retries=5, backoff_s=10.0))

def test_hub_errors_are_retried_then_fail_naming_the_source(monkeypatch):
    calls = []

    def flaky(*args, **kwargs):
        calls.append(args)
        raise ConnectionError("no route to host")

    import datasets

    monkeypatch.setattr(datasets, "load_dataset", flaky)
    src = SourceConfig(hub_id="openai/gsm8k", config="main", split="train")
    with pytest.raises(ConnectionError, match="openai/gsm8k.*after 3 retries"):
        list(sources.iter_hub(src, retries=3, backoff_s=0.0))
    assert len(calls) == 4


def test_hub_stream_restarts_without_duplicates(monkeypatch):
    attempts = []

    def stream(*args, **kwargs):
        attempts.append(1)
        fail = len(attempts) == 1

        def gen():
            for i in range(5):
                if fail and i == 3:
                    raise ConnectionError("dropped")
                yield {"text": str(i)}
        return gen()

    import datasets

    monkeypatch.setattr(datasets, "load_dataset", stream)
    rows = list(sources.iter_hub(SourceConfig(hub_id="x/y"), retries=2, backoff_s=0.0))
    assert [r["text"] for r in rows] == ["0", "1", "2", "3", "4"]


def test_script_repos_are_streamed_through_their_files():
    args, kwargs = sources.hub_load_args(SourceConfig(hub_id="openai/gsm8k", config="main", split="test"))
    assert args == ("openai/gsm8k", "main") and kwargs == {"split": "test", "streaming": True}
    src = SourceConfig(hub_id="pile-of-law/pile-of-law", config="us_bills", data_files="data/train.us_bills.jsonl.xz")
    args, kwargs = sources.hub_load_args(src)
    assert args == ("json",)
    assert kwargs == {"data_files": "hf://datasets/pile-of-law/pile-of-law/data/train.us_bills.jsonl.xz",
                      "split": "train", "streaming": True}
    src = SourceConfig(hub_id="deepmind/math_dataset", data_files="algebra__linear_1d/train-*.parquet")
    assert sources.hub_load_args(src)[0] == ("parquet",)
    with pytest.raises(ValueError, match="neither JSON lines nor parquet"):
        sources.hub_load_args(SourceConfig(hub_id="x/y", data_files="data/train.tar.gz"))


def test_compressed_json_lines_stream_through_the_generic_builder(tmp_path):
    """What the hub path does with pile-of-law's .jsonl.xz files, on a local file of the same kind."""
    import json
    import lzma

    from datasets import load_dataset

    rows = [{"text": f"bill {i}", "url": f"u{i}"} for i in range(3)]
    path = tmp_path / "train.us_bills.jsonl.xz"
    path.write_bytes(lzma.compress("".join(json.dumps(r) + "\n" for r in rows).encode()))
    args, kwargs = sources.hub_load_args(SourceConfig(hub_id="x/y", data_files=path.name))
    kwargs["data_files"] = str(path)  # the local file instead of hf://datasets/x/y/...
    assert list(load_dataset(*args, **kwargs)) == rows


def test_local_records_end_at_lf_crlf_or_cr(tmp_path):
    p = tmp_path / "mixed.jsonl"
    p.write_bytes(b'{"a": 1}\r{"a": 2}\r\n{"a": "x\\u2028y"}\n\n{"a": 4}')
    assert [r["a"] for r in sources.read_records(p)] == [1, 2, "x\u2028y", 4]


def test_a_revision_reads_the_files_of_that_ref():
    src = SourceConfig(hub_id="NortheasternUniversity/big_patent", revision="refs/convert/parquet",
                       data_files="all/*train/*.parquet")
    args, kwargs = sources.hub_load_args(src)
    assert args == ("parquet",)
    assert kwargs["data_files"] == "hf://datasets/NortheasternUniversity/big_patent@refs/convert/parquet/all/*train/*.parquet"
    from huggingface_hub.hf_file_system import parse_hf_uri

    parsed = parse_hf_uri(kwargs["data_files"])  # how huggingface_hub will read that path
    assert (parsed.id, parsed.revision, parsed.path_in_repo) == (src.hub_id, src.revision, src.data_files)
    _, kwargs = sources.hub_load_args(SourceConfig(hub_id="a/b", revision="v1.0"))
    assert kwargs["revision"] == "v1.0"


def test_a_gated_source_without_a_token_is_skipped_with_a_warning(monkeypatch):
    import datasets

    monkeypatch.setattr(sources, "hub_token", lambda: None)
    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **k: pytest.fail("must not try a gated repo"))
    with pytest.warns(UserWarning, match=r"source bigcode/the-stack-v2: gated on the hub .*HF_TOKEN\); skipped"):
        assert list(sources.iter_hub(SourceConfig(hub_id="bigcode/the-stack-v2", gated=True))) == []
    monkeypatch.setattr(sources, "hub_token", lambda: "hf_x")
    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **k: iter([{"content": "x = 1"}]))
    assert list(sources.iter_hub(SourceConfig(hub_id="bigcode/the-stack-v2", gated=True))) == [{"content": "x = 1"}]


def test_flan_2022_rows_format_as_a_chat_turn():
    from moe_lm.data.formatters import flan

    row = {"inputs": "Is the sky blue? Think step by step.", "targets": "It scatters blue light. So yes.",
           "task_source": "CoT", "task_name": "creak", "template_type": "zs_opt"}  # SirNeural/flan_v2 cot_zs_opt
    text = flan(row)
    assert "Is the sky blue? Think step by step." in text and text.rstrip().endswith("It scatters blue light. So yes.")
