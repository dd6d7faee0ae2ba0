"""Lowest train loss any model can reach on the overfit file, per `data.sampling` mode.

    python experiments/overfit_loss_floor.py [path] [seq_len ...]

Every sample starts with `<|endoftext|>`, so its first line's first tokens cannot be told apart from
other samples' until they diverge. The best possible model predicts the empirical next-token
distribution of each sample prefix; this prints that cross-entropy (nats per target token).
(`windows` is left out: with one sample per stream offset its floor is ~0 and the count is slow.)
"""

from __future__ import annotations

import math
import sys
from collections import Counter, defaultdict

from moe_lm.data.text_lines import aligned_windows, encode_lines, line_stream, pack_lines, read_lines
from moe_lm.data.bpe import eot_id, train_bpe


def per_line_floor(samples: list[list[int]]) -> float:
    nexts: dict[tuple[int, ...], Counter] = defaultdict(Counter)
    for s in samples:
        for t in range(1, len(s)):
            nexts[tuple(s[:t])][s[t]] += 1
    total = n = 0
    for s in samples:
        for t in range(1, len(s)):
            c = nexts[tuple(s[:t])]
            total += -math.log(c[s[t]] / sum(c.values()))
            n += 1
    return total / n


def main() -> None:
    path = sys.argv[1] if len(sys.argv) > 1 else "moe_lm/resources/overfit_100_lines.txt"
    seq_lens = [int(a) for a in sys.argv[2:]] or [64, 128, 256]
    lines = read_lines(path)
    tok = train_bpe(lines, 32000)
    samples = encode_lines(lines, tok, seq_len=1024)
    stream, eot = line_stream(lines, tok), eot_id(tok)
    print(f"{len(lines)} lines, {sum(len(s) - 1 for s in samples)} target tokens; floor in nats per target token")
    print(f"| sampling | seq_len | samples | loss floor |\n|---|---|---|---|\n| lines | - | {len(samples)} | "
          f"{per_line_floor(samples):.4f} |")
    for seq_len in seq_lens:
        packed = pack_lines(samples, seq_len + 1, eot)
        aligned = aligned_windows(stream, seq_len + 1, eot)
        print(f"| packed | {seq_len} | {len(packed)} | {per_line_floor(packed):.4f} |")
        print(f"| aligned | {seq_len} | {len(aligned)} | {per_line_floor([aligned[i] for i in range(len(aligned))]):.4f} |")


if __name__ == "__main__":
    main()
