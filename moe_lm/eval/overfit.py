"""The overfit demo's checks (`+experiment=overfit_100_lines`, `eval.reproduce_lines > 0`): the train loss over
one full pass of the training set, then greedy decoding of evenly spaced lines from their first tokens."""

from __future__ import annotations

from typing import Any, Callable

import torch
from tokenizers import Tokenizer

from moe_lm.config import EvalConfig
from moe_lm.data.text_lines import IGNORE_INDEX, TextLinesDataModule
from moe_lm.data.bpe import eot_id
from moe_lm.inference.decode import greedy_decode
from moe_lm.model import MoETransformer


@torch.no_grad()
def full_pass_loss(model: MoETransformer, dm: TextLinesDataModule) -> float:
    """Token-weighted mean cross-entropy over the whole training set, model in eval mode."""
    model.eval()
    device = next(model.parameters()).device
    total, count = 0.0, 0
    for batch in dm.val_dataloader():
        valid = batch["targets"] != IGNORE_INDEX
        targets = batch["targets"][valid].to(device)
        out = model(batch["input_ids"].to(device), logits_at=valid.to(device), targets=targets)
        total += float(out.ce_sum)
        count += int(valid.sum())
    return total / count


def reproduce_lines(model: MoETransformer, tok: Tokenizer, lines: list[str], n: int, prompt_tokens: int) -> list[dict[str, Any]]:
    """Greedy-decode n evenly spaced lines from their first `prompt_tokens` tokens."""
    eot = eot_id(tok)
    picks = sorted({round(i * (len(lines) - 1) / max(1, n - 1)) for i in range(n)})
    results = []
    for i in picks:
        ids = tok.encode(lines[i]).ids
        prompt, rest = ids[:prompt_tokens], ids[prompt_tokens:]
        got = greedy_decode(model, [eot] + prompt, max_new_tokens=len(rest) + 8, eos_id=eot)
        results.append({"line": i, "ok": got == rest, "expected": lines[i], "got": tok.decode(prompt + got)})
    return results


def overfit_report(model: MoETransformer, dm: TextLinesDataModule, tok: Tokenizer, cfg: EvalConfig,
                   print_fn: Callable[[str], None] = print) -> dict[str, Any]:
    """Print the full-pass loss and each decoded line; the last line printed is `reproduced: K/N`."""
    loss = full_pass_loss(model, dm)
    print_fn(f"train loss {loss:.4f} (full pass over the training set)")
    res = reproduce_lines(model, tok, dm.lines, cfg.reproduce_lines, cfg.prompt_tokens)
    for r in res:
        print_fn(f"[{'reproduced' if r['ok'] else 'MISMATCH  '}] line {r['line']:3d}: {r['got']}")
        if not r["ok"]:
            print_fn(f"             expected: {r['expected']}")
    ok = sum(r["ok"] for r in res)
    print_fn(f"reproduced: {ok}/{len(res)}")
    return {"train_loss_full_pass": loss, "reproduced": ok}
