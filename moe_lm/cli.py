"""What every command shares: one argument style, one error handler, `--help`.

Every command takes Hydra overrides (`key=value`, `group=option`, `+experiment=NAME`) composed against the
YAML files in `conf/` and validated by the schemas in `moe_lm/config/`. Bad input (an unknown key, an
impossible value, a missing or unreadable file, a full disk) ends in one line on stderr, `error: <key or path>:
<what is wrong>`, and exit status 2, no traceback; a training run that diverges exits 1 the same way.
`--debug` (or MOE_LM_DEBUG=1) shows the traceback instead.
"""

from __future__ import annotations

import dataclasses
import os
import re
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from omegaconf import DictConfig, OmegaConf

from moe_lm.config import ConfigError, DomainsDataConfig, TrainConfig, register_configs
from moe_lm.errors import NonFiniteError
from moe_lm.errors import CheckpointError

DEBUG_VAR = "MOE_LM_DEBUG"
# The primary config (conf/<name>.yaml) each command composes.
COMMAND_CONFIG = {"train": "config", "params": "config", "tokenizer": "config", "prepare": "config",
                  "generate": "generate", "inspect": "inspect", "report": "report", "plan": "plan",
                  "scaling": "scaling", "evaluate": "evaluate", "export": "export"}


def conf_dir() -> Path:
    """`conf/` inside an installed package (a wheel ships it there), else the source checkout's `conf/`."""
    package = Path(__file__).resolve().parent
    installed = package / "conf"
    return installed if installed.is_dir() else package.parent / "conf"


class _NeverRaised(Exception):
    """Stands for the exception class of a package that was never imported: nothing can have raised it."""


def lightning_misconfiguration() -> type[BaseException]:
    """Lightning's MisconfigurationException where Lightning is loaded, the only case where it can have been raised:
    importing Lightning just to name it would add seconds to the start of every command that never uses it."""
    module = sys.modules.get("lightning.fabric.utilities.exceptions")
    return module.MisconfigurationException if module is not None else _NeverRaised


def user_errors() -> tuple[type[BaseException], ...]:
    """Exceptions that mean bad input rather than a bug: reported in one line."""
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    # OSError: a missing or unreadable file, a full disk, an unreachable hub (ConnectionError)
    return ConfigError, CheckpointError, OSError, HydraException, OmegaConfBaseException, lightning_misconfiguration()


def describe_hydra(e: BaseException) -> str:
    """Hydra's composition errors, led by the key they are about and on one line."""
    msg = str(e)
    if m := re.search(r"Could not override '([^']+)'", msg):
        return f"{m[1]}: not a setting of this command (--help lists them)"
    if m := re.search(r"An item is already at '([^']+)'", msg):
        return f"{m[1]}: already a setting; write {m[1]}=VALUE without +"
    if m := re.search(r"Could not find '([^']+)/([^']+)'", msg):
        options = re.findall(r"^\t(\S+)$", msg.split("Config search path")[0], re.M)
        return f"{m[1]}: no option {m[2]!r} (options: {', '.join(options)})"
    if (m := re.search(r"Error merging override (\S+?)=", msg)) and e.__cause__ is not None:
        return f"{m[1]}: {str(e.__cause__).splitlines()[0]}"
    return "overrides: " + " ".join(msg.split())


def describe(e: BaseException) -> str:
    """`<key or path>: <what is wrong>` for an error from `user_errors()`."""
    from hydra.errors import HydraException

    if isinstance(e, OSError) and e.filename and e.strerror:  # raised by the OS: name the file it was about
        return f"{e.filename}: {e.strerror}"
    if isinstance(e, lightning_misconfiguration()):  # Lightning refusing a trainer.* setting on this machine
        return f"trainer: {e}"
    if isinstance(e, HydraException):
        return describe_hydra(e)
    return str(e)


def debug_requested(argv: list[str]) -> bool:
    """Remove `--debug` from argv (in place); True if it was there or MOE_LM_DEBUG is set."""
    flag = "--debug" in argv
    while "--debug" in argv:
        argv.remove("--debug")
    if flag:
        os.environ[DEBUG_VAR] = "1"
        os.environ["HYDRA_FULL_ERROR"] = "1"
    return os.environ.get(DEBUG_VAR, "") not in ("", "0")


# Hydra's own command-line flags that take the next word as their value
HYDRA_VALUE_FLAGS = ("--cfg", "-c", "--package", "-p", "--config-path", "-cp", "--config-name", "-cn",
                     "--config-dir", "-cd", "--experimental-rerun", "--info", "-i")
SWEEP_FUNCTIONS = ("choice(", "range(", "interval(", "glob(", "tag(", "sort(", "shuffle(")


def sweep_jobs(argv: Sequence[str]) -> list[list[str]] | None:
    """Overrides of the jobs a Hydra command line runs, enough to check each value once: Hydra's flags and
    `hydra.*` keys left out; under -m, the first job (every sweep list at its first value) and, for each other
    value of a list, the first job with that value. None where a sweep function (`choice(...)`, ...) is used."""
    fixed, swept, skip, deleted = [], {}, False, []
    multirun = "-m" in argv or "--multirun" in argv
    for word in argv:
        if skip:
            skip = False
            continue
        if word in HYDRA_VALUE_FLAGS:
            skip = True
            continue
        if word.startswith("~") and "=" not in word and not word[1:].startswith(("hydra.", "hydra/")):
            deleted.append(word)  # a key deleted from the config: in every job
            continue
        if word.startswith("-") or word.lstrip("+~").startswith(("hydra.", "hydra/")) or "=" not in word:
            continue
        key, value = word.split("=", 1)
        if multirun and value.startswith(SWEEP_FUNCTIONS):
            return None
        if multirun and "," in value and not value.startswith(("[", "{", "'", '"')):
            swept[key] = value.split(",")
        fixed.append((key, value))
    first = [f"{k}={swept[k][0] if k in swept else v}" for k, v in fixed]
    jobs = [first]
    for i, (key, _) in enumerate(fixed):
        for value in swept.get(key, [])[1:]:
            jobs.append(first[:i] + [f"{key}={value}"] + first[i + 1:])
    return [deleted + job for job in jobs]


def check_command_line(argv: Sequence[str], config_name: str = "config") -> None:
    """Compose and validate what a Hydra app (`moe_lm.train`) is about to run, each swept value once, so that a
    typo, an unknown option or an impossible value ends in the one-line `error:` and exit 2 of every other command,
    not in Hydra's report."""
    jobs = sweep_jobs(argv)
    if jobs is None or "--help" in argv or "-h" in argv:
        return
    with reported_errors():
        for overrides in jobs:
            compose(overrides, config_name)


@contextmanager
def reported_errors() -> Iterator[None]:
    """The one error handler of every command: bad input -> `error: ...` and exit 2; divergence -> exit 1."""
    try:
        yield
    except BrokenPipeError:  # the reader went away (`| head`): nothing more to say, and nothing to flush
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(1)
    except (NonFiniteError, *user_errors()) as e:
        if os.environ.get(DEBUG_VAR, "") not in ("", "0"):
            raise
        print(f"error: {describe(e)}", file=sys.stderr)
        sys.exit(1 if isinstance(e, NonFiniteError) else 2)


def unknown_keys(node: Any, prefix: str = "") -> list[str]:
    """Keys that no schema declares. Hydra lets `+group.key=value` add them, and converting to the dataclasses
    would drop them silently."""
    if not isinstance(node, DictConfig):
        return []
    schema = OmegaConf.get_type(node)
    fields = {f.name for f in dataclasses.fields(schema)} if dataclasses.is_dataclass(schema) else None
    found = []
    for key in node.keys():
        if key == "hydra":
            continue
        if fields is not None and key not in fields:
            found.append(f"{prefix}{key}")
        else:
            found += unknown_keys(node._get_node(key), f"{prefix}{key}.")
    return found


def non_finite_keys(obj: Any, prefix: str = "") -> list[str]:
    """Float settings that are nan or inf (no setting means either)."""
    import math

    if dataclasses.is_dataclass(obj):
        return [k for f in dataclasses.fields(obj) for k in non_finite_keys(getattr(obj, f.name), f"{prefix}{f.name}.")]
    if isinstance(obj, dict):
        return [k for key, v in obj.items() for k in non_finite_keys(v, f"{prefix}{key}.")]
    if isinstance(obj, (list, tuple)):
        return [k for i, v in enumerate(obj) for k in non_finite_keys(v, f"{prefix}{i}.")]
    return [prefix[:-1]] if isinstance(obj, float) and not math.isfinite(obj) else []


def validate(cfg: DictConfig) -> Any:
    """DictConfig -> validated dataclasses: no unknown key, every `__post_init__` check, then the checks that
    need moe_lm.data."""
    unknown = unknown_keys(cfg)
    if unknown:
        raise ConfigError(f"{unknown[0]}: not a setting of this command (unknown keys: {unknown})")
    obj = OmegaConf.to_object(cfg)
    bad = non_finite_keys(obj)
    if bad:
        raise ConfigError(f"{bad[0]}: must be a finite number, got {OmegaConf.select(cfg, bad[0])}")
    if isinstance(obj, TrainConfig) and isinstance(obj.data, DomainsDataConfig):
        from moe_lm.data.formatters import check_formatters

        check_formatters(obj.data)
    return obj


def compose_raw(overrides: Sequence[str] = (), config_name: str = "config") -> DictConfig:
    from hydra import compose as hydra_compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    register_configs()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
        return hydra_compose(config_name=config_name, overrides=list(overrides))


def compose(overrides: Sequence[str] = (), config_name: str = "config") -> Any:
    """The validated config of a command (`config` = training, `generate`, `inspect`, `report`)."""
    return validate(compose_raw(overrides, config_name))


def split_text_args(argv: Sequence[str], text_keys: Sequence[str]) -> tuple[list[str], dict[str, str]]:
    """Free-text values (`prompt=...`) are taken verbatim, never parsed as Hydra override syntax."""
    rest, texts = [], {}
    for arg in argv:
        key, sep, value = arg.partition("=")
        if sep and key in text_keys:
            texts[key] = value
        else:
            rest.append(arg)
    return rest, texts


def read_prompt(prompt: str, prompt_file: str) -> str:
    """The prompt: `prompt=` as given, or the text of `prompt_file` ('-' = stdin) without one final newline (the
    one editors and `echo` add)."""
    if not prompt_file:
        return prompt
    try:
        text = sys.stdin.read() if prompt_file == "-" else Path(prompt_file).read_bytes().decode("utf-8")
    except FileNotFoundError:
        raise ConfigError(f"prompt_file: no such file: {prompt_file}") from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"prompt_file: {prompt_file} is not UTF-8 text (byte offset {e.start})") from None
    text = text[:-1] if text.endswith("\n") else text
    if not text.strip():
        where = "stdin" if prompt_file == "-" else prompt_file
        raise ConfigError(f"prompt_file: {where} is empty; give the prompt's text (or prompt=\"\" for no prompt)")
    return text


def help_text(doc: str | None, config_name: str, example: str = "", keys: Sequence[str] = (),
              overrides: Sequence[str] = ()) -> str:
    """The command's docstring, an example, and its settings with their defaults: the whole config, or only the
    top-level `keys` the command reads (a command sharing the training config does not list the model's), as
    composed with `overrides` (the groups the command needs, e.g. data=domains)."""
    cfg = compose_raw(overrides, config_name)
    example = f"\n\nExample: {example}" if example else ""
    shown = OmegaConf.masked_copy(cfg, list(keys)) if keys else cfg
    which = f"the settings it reads from `{config_name}`" if keys else f"`{config_name}`"
    return (f"{(doc or '').strip()}{example}\n\nConfig ({which}; override any key with key=value, a group "
            f"with group=option; --debug shows a traceback on error):\n\n{OmegaConf.to_yaml(shown, resolve=False)}")


def plain_warnings() -> None:
    """Warnings as one line each, `warning: <message>`, not Python's `file:line: UserWarning:` and source line."""
    import warnings

    warnings.formatwarning = lambda message, category, *args, **kwargs: f"warning: {message}\n"


def run_command(main: Callable[[Any], None], config_name: str, doc: str | None, text_keys: Sequence[str] = (),
                argv: Sequence[str] | None = None, example: str = "", help_keys: Sequence[str] = (),
                help_overrides: Sequence[str] = ()) -> None:
    """Parse argv as overrides of `config_name`, validate, call `main(cfg)`; bad input exits 2 with one line.
    help_keys: the top-level keys `--help` lists (all of them when empty), composed with help_overrides."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not debug_requested(argv):
        plain_warnings()
    with reported_errors():
        if "--help" in argv or "-h" in argv:
            print(help_text(doc, config_name, example, help_keys, help_overrides))
            return
        overrides, texts = split_text_args(argv, text_keys)
        cfg = compose(overrides, config_name)
        for key, value in texts.items():
            setattr(cfg, key, value)
        if texts:
            cfg.__post_init__()  # the checks again, now that the verbatim values are in
        main(cfg)
