"""Generate from a checkpoint: `python -m moe_lm.generate ckpt=PATH prompt="..." [temperature=0.8 top_p=0.9 ...]`.

`chat=true` runs a multi-turn chat from stdin. Tokens are printed as they are produced.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, fields

from moe_lm.sampling import SamplingConfig


@dataclass
class GenerateConfig(SamplingConfig):
    ckpt: str = ""
    prompt: str = ""
    chat: bool = False
    device: str = "cpu"


def parse_args(argv: list[str]) -> GenerateConfig:
    """key=value arguments, typed by GenerateConfig; an unknown key is an error naming it."""
    from omegaconf import OmegaConf

    try:
        cfg = OmegaConf.merge(OmegaConf.structured(GenerateConfig), OmegaConf.from_dotlist(argv))
        out = OmegaConf.to_object(cfg)
    except Exception as e:
        raise ValueError(f"bad arguments: {e}") from e
    if not out.ckpt:
        raise ValueError("ckpt: required, e.g. ckpt=runs/overfit_100_lines/checkpoints/final.ckpt")
    return out


def stream_text(model, tok, prompt_ids: list[int], cfg: SamplingConfig, eot) -> str:
    from moe_lm.generation import generate_ids

    printed = ""
    for ids in generate_ids(model, [prompt_ids], cfg, eot, stream=True):
        text = tok.decode(ids)
        stop = next((s for s in cfg.stop if s in text), None)
        if stop:
            text = text.split(stop)[0]
        sys.stdout.write(text[len(printed):])
        sys.stdout.flush()
        printed = text
        if stop:
            break
    sys.stdout.write("\n")
    return printed


def main(argv: list[str]) -> None:
    from moe_lm.checkpoint import load_model
    from moe_lm.data.tokenizer import EOT, chat_text, has_chat_tokens

    cfg = parse_args(argv)
    model, tok, _ = load_model(cfg.ckpt, cfg.device)
    if tok is None:
        raise ValueError(f"ckpt: {cfg.ckpt} carries no tokenizer")
    eot = tok.token_to_id(EOT)
    sampling = SamplingConfig(**{f.name: getattr(cfg, f.name) for f in fields(SamplingConfig)})
    if not cfg.chat:
        stream_text(model, tok, [eot] + tok.encode(cfg.prompt).ids, sampling, eot)
        return
    messages: list[tuple[str, str]] = []
    kind = "role tokens" if has_chat_tokens(tok) else "plain-text template: this tokenizer has no role tokens"
    print(f"chat ({kind}): type a message, an empty line to quit")
    for line in sys.stdin:
        if not line.strip():
            break
        messages.append(("user", line.strip()))
        prompt = [eot] + tok.encode(chat_text(messages, tok)).ids
        if has_chat_tokens(tok):  # a turn ends where the next role marker would start
            sampling.stop = sorted(set(sampling.stop) | {"<|user|>"})
        messages.append(("assistant", stream_text(model, tok, prompt, sampling, eot)))


if __name__ == "__main__":
    from moe_lm.cli import run

    run(main)
