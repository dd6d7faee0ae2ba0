"""Inference: the checkpoint loader, KV-cached decoding, logits processors, beam search, logit lens."""
