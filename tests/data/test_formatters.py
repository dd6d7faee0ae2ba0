from collections import Counter
from pathlib import Path


from moe_lm.cli import compose
from moe_lm.data.formatters import ROLE_TOKENS, Skip, format_records, oasst1_threads
from moe_lm.data.sources import read_records


def format_file(formatter: str, path: Path) -> tuple[int, Counter]:
    """(documents, skipped by reason) for one local file."""
    recs = list(read_records(path))
    bad = Counter(r.reason for r in recs if isinstance(r, Skip))
    docs, skipped = 0, Counter(bad)
    for out in format_records(formatter, [r for r in recs if not isinstance(r, Skip)]):
        if isinstance(out, Skip):
            assert out.reason
            skipped[out.reason] += 1
        else:
            assert isinstance(out, str) and out.strip()
            docs += 1
    return docs, skipped


def test_every_shared_record_formats_or_is_skipped_with_a_reason(shared_data):
    cfg = compose(["data=domains"])
    covered = set()
    for name, domain in cfg.data.domains.items():
        for src in domain.sources:
            if not src.local_file:
                continue
            path = shared_data / src.local_file
            docs, skipped = format_file(src.formatter, path)
            assert docs > 0, f"{name}/{src.local_file}: nothing formatted ({dict(skipped)})"
            covered.add(path.resolve())
    every = {p.resolve() for p in shared_data.glob("*/*.jsonl")}
    assert every == covered, f"shared files without a source in conf/data/domains.yaml: {every - covered}"


def test_record_formatters_on_upstream_shaped_rows():
    (gsm,) = format_records("gsm8k", [{"question": "2+2?", "answer": "2+2 = <<2+2=4>>4\n#### 4"}])
    assert gsm == "Question: 2+2?\nAnswer: 2+2 = 4\n#### 4"
    (code,) = format_records("code", [{"repo_name": "a/b", "path": "/x/y.py", "content": "print(1)\n"}])
    assert code == "# a/b/x/y.py\nprint(1)\n"
    (no_blob,) = format_records("code", [{"blob_id": "abc", "content": None}])
    assert isinstance(no_blob, Skip) and "blob_id" in no_blob.reason
    (paper,) = format_records("arxiv", [{"title": "A\n  title", "abstract": "  Wrapped\n  text. "}])
    assert paper == "A title\n\nWrapped text."
    (d,) = format_records("dolly", [{"instruction": "Sum", "context": "1 and 2", "response": "3"}])
    assert d == f"{ROLE_TOKENS['user']}Sum\n\n1 and 2{ROLE_TOKENS['assistant']}3"
    (missing,) = format_records("flan", [{"inputs": "q"}])
    assert missing == Skip("missing field 'targets'")


def test_oasst1_rebuilds_best_ranked_thread():
    rows = [
        {"message_id": "r", "parent_id": None, "message_tree_id": "t", "role": "prompter", "text": "Hi?", "rank": None},
        {"message_id": "a2", "parent_id": "r", "message_tree_id": "t", "role": "assistant", "text": "meh", "rank": 1},
        {"message_id": "a1", "parent_id": "r", "message_tree_id": "t", "role": "assistant", "text": "Hello!", "rank": 0},
        {"message_id": "p2", "parent_id": "a1", "message_tree_id": "t", "role": "prompter", "text": "Bye", "rank": 0},
        {"message_id": "lone", "parent_id": None, "message_tree_id": "u", "role": "prompter", "text": "?", "rank": None},
    ]
    out = list(oasst1_threads(rows))
    u, a = ROLE_TOKENS["user"], ROLE_TOKENS["assistant"]
    assert out[0] == f"{u}Hi?{a}Hello!{u}Bye"
    assert out[1] == Skip("conversation without a reply")


def test_malformed_lines_are_counted_not_fatal(tmp_path):
    f = tmp_path / "x.jsonl"
    f.write_bytes(b'{"text": "ok"}\n{not json\n\xff\xfe\n[1, 2]\n{"text": ""}\n')
    docs, skipped = format_file("text", f)
    assert docs == 1
    assert skipped == Counter({"bad JSON": 1, "not UTF-8": 1, "record is not a JSON object": 1, "empty field 'text'": 1})
