from moe_lm.cli import compose
from moe_lm.data.formatters import ROLE_TOKENS, Skip, format_records
from moe_lm.data.sources import iter_source
from moe_lm.data.bpe import train_domain_tokenizer


def test_domain_tokenizer_round_trips_every_shared_record(tmp_path, shared_data):
    cfg = compose(["data=domains", "data.source=local", f"data.local_root={shared_data}", "tokenizer.vocab_size=4000",
                   "tokenizer.sample_bytes_per_domain=300000"])
    tok, meta = train_domain_tokenizer(cfg.data, cfg.tokenizer)
    assert meta["vocab_size"] == 4000 and len(meta["hash"]) == 16
    for role in ROLE_TOKENS.values():  # chat role markers are single tokens
        assert len(tok.encode(role).ids) == 1
    for name, domain in cfg.data.domains.items():
        assert meta["domains"][name]["bytes_per_token"] > 1.0
        for src in domain.sources:
            rows = [r for r in iter_source(src, cfg.data) if not isinstance(r, Skip)]
            docs = [d for d in format_records(src.formatter, rows) if not isinstance(d, Skip)]
            encs = tok.encode_batch(docs)
            bad = [d[:80] for d, e in zip(docs, encs) if tok.decode(e.ids, skip_special_tokens=False) != d]
            assert not bad, f"{name}/{src.local_file}: {len(bad)} documents do not round-trip, e.g. {bad[0]!r}"
