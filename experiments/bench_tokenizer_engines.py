"""Could another BPE engine make prepare fast enough? The project's tokenizer run by HF tokenizers (what prepare
uses) against the same merges run by tiktoken's engine (tiktoken is not a dependency: `pip install tiktoken`).

    python experiments/bench_tokenizer_engines.py --tokenizer PATH/tokenizer.json [--local-root ../shared/data]

Every record of every sample file under --local-root is encoded (its string fields joined), in batches, by
both engines in interleaved rounds on all cores; the table gives MB/s of text and the last line how many
documents the two encode differently. tiktoken ranks merges by the rank of the merged token, HF by the rank of
the pair; the two agree on a byte-level BPE whose ids follow its merge order, which the count checks on this text.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from benchlib import arguments, device_name, interleaved, summarise, table
from moe_lm.data.bpe import load_tokenizer

GPT2_SPLIT = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""  # ByteLevel's regex


def byte_decoder() -> dict[str, int]:
    """The byte-level alphabet's character -> byte (GPT-2's printable remapping of the 256 bytes)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars, extra = {b: chr(b) for b in printable}, 0
    for b in range(256):
        if b not in chars:
            chars[b], extra = chr(256 + extra), extra + 1
    return {c: b for b, c in chars.items()}


def as_tiktoken(tok):
    import tiktoken

    dec, vocab = byte_decoder(), tok.get_vocab()
    added = {t.content for t in tok.get_added_tokens_decoder().values()}
    ranks = {bytes(dec[ch] for ch in t): i for t, i in vocab.items() if t not in added}
    return tiktoken.Encoding("moe_lm", pat_str=GPT2_SPLIT, mergeable_ranks=ranks,
                             special_tokens={t: vocab[t] for t in added})


def main() -> None:
    ap = arguments(__doc__, warmup=1)
    ap.add_argument("--tokenizer", required=True)
    ap.add_argument("--local-root", default="../shared/data")
    args = ap.parse_args()
    docs = [" ".join(v for v in json.loads(line).values() if isinstance(v, str))
            for f in sorted(Path(args.local_root).glob("*/*.jsonl")) for line in f.open(encoding="utf-8")]
    mb = sum(len(d.encode()) for d in docs) / 1e6
    tok = load_tokenizer(args.tokenizer)
    enc = as_tiktoken(tok)
    out: dict[str, list] = {}

    def hf() -> None:
        out["hf"] = [e.ids for i in range(0, len(docs), 256) for e in tok.encode_batch_fast(docs[i:i + 256])]

    def tk() -> None:
        out["tiktoken"] = enc.encode_batch(docs, num_threads=os.cpu_count() or 1, allowed_special="all")

    cases = {"HF tokenizers (encode_batch_fast)": hf, "tiktoken engine": tk}
    print(f"device: {device_name(torch.device('cpu'))}; {len(docs):,} documents, {mb:.1f} MB, vocab "
          f"{tok.get_vocab_size():,}; {args.reps} interleaved rounds after {args.warmup} warm-up\n")
    summary = summarise(interleaved(cases, args.reps, args.warmup, torch.device("cpu")),
                        "HF tokenizers (encode_batch_fast)")
    print(table(summary, "HF tokenizers (encode_batch_fast)"))
    print("\n" + "; ".join(f"{k} {mb / v['median_s']:.2f} MB/s" for k, v in summary.items()))
    differ = sum(a != b for a, b in zip(out["hf"], out["tiktoken"]))
    print(f"documents encoded differently: {differ} of {len(docs):,}")


if __name__ == "__main__":
    main()
