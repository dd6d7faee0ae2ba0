"""Data: tokenizer, datasets and Lightning data modules."""
