"""The overfit demo's checks (`+experiment=overfit_100_lines`, `eval.reproduce_lines > 0`): the train loss over
one full pass of the training set, then greedy decoding of evenly spaced lines from their first tokens."""

from __future__ import annotations

from typing import Any, Callable, Iterator

import torch
from tokenizers import Tokenizer

from moe_lm.config import EvalConfig
from moe_lm.data.text_lines import IGNORE_INDEX, TextLinesDataModule
from moe_lm.data.bpe import eot_id
from moe_lm.inference.decode import greedy_decode
from moe_lm.model import MoETransformer


@torch.no_grad()
def full_pass_loss(model: MoETransformer, dm: TextLinesDataModule, batch_size: int = 16) -> float:
    """Token-weighted mean cross-entropy over the whole training set, model in eval mode (in fp32, `batch_size`
    samples a forward: the demo's batch of 1 would make this pass take as long as ~60 training steps)."""
    model.eval()
    device = next(model.parameters()).device
    total, count = 0.0, 0
    for batch in dm.eval_dataloader(batch_size):
        valid = batch["targets"] != IGNORE_INDEX
        targets = batch["targets"][valid].to(device)
        out = model(batch["input_ids"].to(device), logits_at=valid.to(device), targets=targets)
        total += float(out.ce_sum)
        count += int(valid.sum())
    return total / count


def reproduce_lines(model: MoETransformer, tok: Tokenizer, lines: list[str], n: int, prompt_tokens: int
                    ) -> Iterator[dict[str, Any]]:
    """Greedy-decode n evenly spaced lines from their first `prompt_tokens` tokens, yielding each as it is done."""
    eot = eot_id(tok)
    picks = sorted({round(i * (len(lines) - 1) / max(1, n - 1)) for i in range(n)})
    for i in picks:
        ids = tok.encode(lines[i]).ids
        prompt, rest = ids[:prompt_tokens], ids[prompt_tokens:]
        got = greedy_decode(model, [eot] + prompt, max_new_tokens=len(rest) + 8, eos_id=eot)
        yield {"line": i, "ok": got == rest, "expected": lines[i], "got": tok.decode(prompt + got)}


def overfit_report(model: MoETransformer, dm: TextLinesDataModule, tok: Tokenizer, cfg: EvalConfig,
                   print_fn: Callable[[str], None] = print, steps: int | None = None) -> dict[str, Any]:
    """Print the full-pass loss and each decoded line as it is done; the last line printed is `reproduced: K/N`
    (with a hint when the training budget, `steps`, left lines unlearnt)."""
    print_fn(f"scoring the training set in one full pass ({len(dm.eval_set)} samples) ...")
    loss = full_pass_loss(model, dm)
    print_fn(f"train loss {loss:.4f} (full pass over the training set)")
    print_fn(f"decoding {cfg.reproduce_lines} lines greedily from their first {cfg.prompt_tokens} tokens ...")
    ok = n = 0
    for r in reproduce_lines(model, tok, dm.lines, cfg.reproduce_lines, cfg.prompt_tokens):
        print_fn(f"[{'reproduced' if r['ok'] else 'MISMATCH  '}] line {r['line']:3d}: {r['got']}")
        if not r["ok"]:
            print_fn(f"             expected: {r['expected']}")
        ok, n = ok + r["ok"], n + 1
    print_fn(f"reproduced: {ok}/{n}")
    if ok < n and steps is not None:
        print_fn(f"hint: {n - ok} of {n} lines not reproduced after {steps} optimizer steps; memorising every line "
                 f"takes the demo's full budget (trainer.max_steps as in +experiment=overfit_100_lines), and a "
                 f"shorter run reproduces fewer")
    return {"train_loss_full_pass": loss, "reproduced": ok}
