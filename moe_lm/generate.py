"""Generate from a checkpoint: `python -m moe_lm.generate ckpt=PATH prompt="..." [temperature=0.8 top_p=0.9 ...]`.

Tokens are printed as they are produced (moe_lm/inference/decode.py, with the KV cache). `chat=true` runs a
multi-turn chat from stdin. The prompt is taken verbatim (colons, quotes and all), or read from
`prompt_file=PATH` (`prompt_file=-` reads stdin); every other key is a sampling setting of conf/generate.yaml.
On the CPU the weights are laid out column-major first (faster one-row matmuls) unless `compile=true`, which
compiles the one-token step (a CUDA graph on a GPU; one-row matmul kernels of its own on the CPU); compiling takes
a while, so it pays on long or repeated generations.
"""

from __future__ import annotations

import sys
from dataclasses import fields
from typing import Sequence

from moe_lm.cli import read_prompt, run_command
from moe_lm.config import GenerateConfig, SamplingConfig


EXAMPLE = ('python -m moe_lm.generate ckpt=runs/overfit_100_lines/checkpoints/final.ckpt '
           'prompt="Question: what is 2+2?" temperature=0')


def main(cfg: GenerateConfig) -> None:
    from moe_lm.data.bpe import EOT, chat_text, has_chat_tokens
    from moe_lm.errors import CheckpointError
    from moe_lm.io.checkpoint import load_model
    from moe_lm.inference.decode import column_major_weights, stream_text
    from moe_lm.inference.expert_control import apply_expert_control

    prompt = None if cfg.chat else read_prompt(cfg.prompt, cfg.prompt_file)  # bad input fails before the load
    model, tok, run_cfg = load_model(cfg.ckpt, cfg.device)
    steered = apply_expert_control(model, cfg.experts, run_cfg)
    if steered:  # on stderr: stdout holds the text alone
        print(steered, file=sys.stderr)
    if cfg.device == "cpu" and not cfg.compile:  # MKL's one-row matmuls read it faster; compiled steps have their own
        column_major_weights(model)
    if tok is None:
        raise CheckpointError(f"ckpt: {cfg.ckpt} carries no tokenizer")
    eot = tok.token_to_id(EOT)
    sampling = SamplingConfig(**{f.name: getattr(cfg, f.name) for f in fields(SamplingConfig)})
    write = sys.stdout.write
    if not cfg.chat:
        if cfg.echo:
            write(prompt)
        stream_text(model, tok, [eot] + tok.encode(prompt).ids, sampling, eot, write)
        return
    messages: list[tuple[str, str]] = []
    kind = "role tokens" if has_chat_tokens(tok) else "plain-text template: this tokenizer has no role tokens"
    print(f"chat ({kind}): type a message, an empty line to quit")
    if has_chat_tokens(tok):  # a turn ends where the next role marker would start
        sampling.stop = sorted(set(sampling.stop) | {"<|user|>"})
    for line in sys.stdin:
        if not line.strip():
            break
        messages.append(("user", line.strip()))
        prompt = [eot] + tok.encode(chat_text(messages, tok)).ids
        messages.append(("assistant", stream_text(model, tok, prompt, sampling, eot, write)))


def cli(argv: Sequence[str] | None = None) -> None:
    """The command line (argv defaults to sys.argv[1:])."""
    run_command(main, "generate", __doc__, text_keys=("prompt", "prompt_file"), argv=argv,
                example=EXAMPLE)


if __name__ == "__main__":
    cli()
