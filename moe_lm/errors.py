"""Errors that end a command with a message rather than a traceback (moe_lm/cli.py reports them).

Bad input raises `moe_lm.config.ConfigError` (or `CheckpointError`, `OSError`) naming the key or path;
`NonFiniteError` is a training run that diverged.
"""


class NonFiniteError(RuntimeError):
    """The loss or gradient norm stopped being finite: training stops before the weights are touched."""


class CheckpointError(ValueError):
    """A checkpoint that cannot be used; the message names the setting that pointed at it and says why."""
