"""moe_lm: train a small Mixture-of-Experts language model from scratch and see what its experts learn."""

__version__ = "0.1.0"
