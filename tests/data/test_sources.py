import pytest

from moe_lm.config import SourceConfig
from moe_lm.data import sources


def test_hub_errors_are_retried_then_fail_naming_the_source(monkeypatch):
    calls = []

    def flaky(*args, **kwargs):
        calls.append(args)
        raise ConnectionError("no route to host")

    import datasets

    monkeypatch.setattr(datasets, "load_dataset", flaky)
    src = SourceConfig(hub_id="openai/gsm8k", config="main", split="train")
    with pytest.raises(RuntimeError, match="openai/gsm8k.*after 3 retries"):
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
