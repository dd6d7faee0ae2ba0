"""Loader and scoring of the local `moe_lm_domains` task (lm-evaluation-harness imports this beside the YAMLs)."""

import json
from pathlib import Path

DATA = Path(__file__).with_name("moe_lm_domains.jsonl")


def load(domain: str, **_):
    """The task's one split, `test`: this domain's records of moe_lm_domains.jsonl."""
    import datasets

    rows = [json.loads(line) for line in DATA.read_text(encoding="utf-8").splitlines()]
    return datasets.DatasetDict({"test": datasets.Dataset.from_list([r for r in rows if r["domain"] == domain])})


def doc_to_target(doc):
    return doc["text"]  # verbatim: a Jinja template would drop a final newline


def process_results(doc, results):
    (loglikelihood,) = results
    words, n_bytes = len(doc["text"].split()), len(doc["text"].encode("utf-8"))
    return {"word_perplexity": (loglikelihood, words), "byte_perplexity": (loglikelihood, n_bytes),
            "bits_per_byte": (loglikelihood, n_bytes)}
