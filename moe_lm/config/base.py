"""The error every schema raises and the checks that raise it; the package's resources folder."""

from __future__ import annotations

from pathlib import Path


class ConfigError(ValueError):
    """An impossible configuration; the message names the key."""


def _check(cond: bool, key: str, msg: str) -> None:
    if not cond:
        raise ConfigError(f"{key}: {msg}")


def _one_of(value: str, key: str, choices: tuple[str, ...]) -> None:
    _check(value in choices, key, f"must be one of {list(choices)}, got {value!r}")


def resources_dir() -> Path:
    """Files shipped inside the package (the overfit demo's text); found through the package, not the cwd."""
    return Path(__file__).resolve().parent.parent / "resources"
