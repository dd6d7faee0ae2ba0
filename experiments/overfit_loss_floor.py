"""Lowest train loss any model can reach on the overfit file, per `data.sampling` mode.

    python experiments/overfit_loss_floor.py [path] [seq_len]

Every sample starts with `<|endoftext|>`, so its first line's first tokens cannot be told apart from
other samples' until they diverge. The best possible model predicts the empirical next-token
distribution of each sample prefix; this prints that cross-entropy (nats per target token).
"""

from __future__ import annotations

import math
import sys
from collections import Counter, defaultdict

from moe_lm.data.text_lines import encode_lines, pack_lines, read_lines
from moe_lm.data.tokenizer import train_bpe


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
    seq_len = int(sys.argv[2]) if len(sys.argv) > 2 else 64
    lines = read_lines(path)
    samples = encode_lines(lines, train_bpe(lines, 32000), seq_len=1024)
    packed = pack_lines(samples, seq_len + 1, samples[0][0])
    print(f"{len(lines)} lines, {sum(len(s) - 1 for s in samples)} target tokens")
    print(f"loss floor, sampling=lines (one line per sample): {per_line_floor(samples):.4f} nats/token")
    print(f"loss floor, sampling=packed (seq_len {seq_len}, {len(packed)} samples): {per_line_floor(packed):.4f} nats/token")


if __name__ == "__main__":
    main()
