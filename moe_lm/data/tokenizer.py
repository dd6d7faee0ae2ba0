"""Byte-level BPE tokenizer trained with HF `tokenizers`.

Byte-level pre-tokenisation without an added prefix space makes decode(encode(x)) == x exact
for any UTF-8 text. `<|endoftext|>` is id 0 and separates documents.
"""

from __future__ import annotations

import hashlib
from typing import Iterable

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from moe_lm.data.formatters import ROLE_TOKENS, render_chat

EOT = "<|endoftext|>"
SPECIAL_TOKENS = [EOT]


def has_chat_tokens(tok: Tokenizer) -> bool:
    return all(tok.token_to_id(t) is not None for t in ROLE_TOKENS.values())


def chat_text(messages: list[tuple[str, str]], tok: Tokenizer, add_generation_prompt: bool = True) -> str:
    """The chat template (role tokens, or plain text when the tokenizer has none), ending with the
    assistant's turn marker when asked."""
    roles = has_chat_tokens(tok)
    prompt = (ROLE_TOKENS["assistant"] if roles else "Assistant:") if add_generation_prompt else ""
    return render_chat(messages, roles) + prompt


def train_bpe(texts: Iterable[str], vocab_size: int, special_tokens: list[str] | None = None,
              min_frequency: int = 2) -> Tokenizer:
    """Train a byte-level BPE on `texts`. The result may be smaller than `vocab_size` on little text."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, min_frequency=min_frequency, show_progress=False,
        special_tokens=list(special_tokens or SPECIAL_TOKENS), initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer=trainer)
    return tok


def tokenizer_hash(tok: Tokenizer) -> str:
    return hashlib.sha256(tok.to_str().encode()).hexdigest()[:16]


def eot_id(tok: Tokenizer) -> int:
    idx = tok.token_to_id(EOT)
    if idx is None:
        raise ValueError(f"tokenizer has no {EOT} token")
    return idx
