"""HF model directories: write one from a model (`python -m moe_lm.export`, moe_lm/io/hf_export.py), read one back.

A directory holds what `AutoModelForCausalLM.from_pretrained` and `AutoTokenizer.from_pretrained` read:
config.json (DeepseekV3 or DeepseekV2, moe_lm/model/hf_mapping.py), model.safetensors (or shards and an index
above `max_shard_mb`), generation_config.json, tokenizer.json (moe_lm's BPE: the same ids), tokenizer_config.json
(<|endoftext|> as BOS, EOS and padding; the chat template of `generate chat=true`)
and README.md, the model card. It is written into a temporary directory beside `out` and renamed into place, so
a failed export leaves nothing behind. Reading needs no transformers: only the files.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from tokenizers import Tokenizer

from moe_lm.config import ConfigError, ModelConfig
from moe_lm.data.bpe import EOT, has_chat_tokens, load_tokenizer
from moe_lm.data.files import naming, remove_stale_temporaries
from moe_lm.data.formatters import ROLE_TOKENS
from moe_lm.model import MoETransformer
from moe_lm.model.hf_mapping import from_hf_state_dict, hf_config_dict, model_config_from_hf, to_hf_state_dict

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
INDEX = "model.safetensors.index.json"


def chat_template(tok: Tokenizer) -> str:
    """Jinja for `apply_chat_template`, the same text as moe_lm.data.bpe.chat_text (BOS first, as generate does)."""
    if has_chat_tokens(tok):
        roles = "', '".join(ROLE_TOKENS)
        return ("{{ bos_token }}{% for message in messages %}"
                f"{{% if message['role'] not in ['{roles}'] %}}"
                "{{ raise_exception('roles are system, user and assistant') }}{% endif %}"
                "{{ '<|' + message['role'] + '|>' + message['content'] }}{% endfor %}"
                "{% if add_generation_prompt %}{{ '<|assistant|>' }}{% endif %}")
    return ("{{ bos_token }}{% for message in messages %}{{ message['role'] | capitalize + ': ' + message['content'] "
            "+ '\n' }}{% endfor %}{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}")


def hf_tokenizer_files(tok: Tokenizer, max_len: int) -> dict[str, Any]:
    """tokenizer.json (moe_lm's, unchanged: encode adds no token, as GPT-2's) and tokenizer_config.json, whose BOS
    is <|endoftext|>: the chat template starts with it, and lm-eval scores documents after it, as training saw
    them. Plain prompts get the same conditioning as moe_lm.generate by starting with it (`tok.bos_token + text`)."""
    if tok.token_to_id(EOT) is None:
        raise ConfigError(f"ckpt: the checkpoint's tokenizer has no {EOT} token")
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": EOT, "eos_token": EOT, "pad_token": EOT,
              "model_max_length": max_len, "clean_up_tokenization_spaces": False, "add_prefix_space": False,
              "chat_template": chat_template(tok)}
    return {"tokenizer.json": json.loads(tok.to_str()), "tokenizer_config.json": config}


def shard(state: dict[str, torch.Tensor], max_bytes: int) -> list[dict[str, torch.Tensor]]:
    """Tensors in name order, cut into files of at most max_bytes (a larger tensor gets a file of its own)."""
    files: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for name in sorted(state):
        n = state[name].numel() * state[name].element_size()
        if files[-1] and size + n > max_bytes:
            files.append({})
            size = 0
        files[-1][name] = state[name]
        size += n
    return files


def write_weights(state: dict[str, torch.Tensor], out: Path, max_bytes: int) -> list[str]:
    from safetensors.torch import save_file

    parts = shard({k: v.contiguous() for k, v in state.items()}, max_bytes)
    if len(parts) == 1:
        save_file(parts[0], str(out / "model.safetensors"), metadata={"format": "pt"})
        return ["model.safetensors"]
    names = [f"model-{i + 1:05d}-of-{len(parts):05d}.safetensors" for i in range(len(parts))]
    weight_map = {}
    for name, part in zip(names, parts):
        save_file(part, str(out / name), metadata={"format": "pt"})
        weight_map.update({k: name for k in part})
    total = sum(v.numel() * v.element_size() for v in state.values())
    (out / INDEX).write_text(json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))
    return names + [INDEX]


def read_weights(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    if (path / INDEX).is_file():
        try:
            files = sorted(set(json.loads((path / INDEX).read_text())["weight_map"].values()))
        except (json.JSONDecodeError, KeyError, TypeError, AttributeError) as e:
            raise ConfigError(f"{path / INDEX}: not a weight index (a JSON object with a weight_map): {e}") from e
    else:
        files = ["model.safetensors"]
    state: dict[str, torch.Tensor] = {}
    inside = path.resolve()
    for f in files:
        target = (path / f).resolve()
        if not isinstance(f, str) or Path(f).is_absolute() or not target.is_relative_to(inside):
            raise ConfigError(f"{path / INDEX}: the weight file {f!r} is outside the model directory; an index names "
                              f"files inside it")
        if not target.is_file():
            raise ConfigError(f"{path}: {f} is missing")
        state.update(load_file(str(target)))
    return state


def check_out(out: Path) -> None:
    """`out` must be new or an empty directory; nothing is written otherwise."""
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ConfigError(f"out: {out} exists and is not an empty directory; give a new path")


def write_hf_dir(model: MoETransformer, cfg: ModelConfig, tok: Tokenizer, out: Path, card: str,
                 dtype: str = "float32", max_shard_bytes: int = 2000 * 2**20, generation: dict[str, Any] | None = None
                 ) -> list[str]:
    """Write the directory (see the module docstring) atomically; returns the file names."""
    if dtype not in DTYPES:
        raise ConfigError(f"dtype: {dtype!r} is not one of {sorted(DTYPES)}")
    check_out(out)
    eot = tok.token_to_id(EOT)
    files_json = hf_tokenizer_files(tok, cfg.max_seq_len)
    ids = {"bos_token_id": eot, "eos_token_id": eot, "pad_token_id": eot}
    config = hf_config_dict(cfg, dtype, ids)  # refuses what the HF class cannot compute, before any write
    hf_state = to_hf_state_dict(model.state_dict(), cfg, per_expert=True)  # the layout DeepSeek's files have
    state = {k: v.detach().to("cpu", DTYPES[dtype]) for k, v in hf_state.items()}
    stops = [eot] + ([tok.token_to_id(ROLE_TOKENS["user"])] if has_chat_tokens(tok) else [])
    gen = {"bos_token_id": eot, "eos_token_id": stops if len(stops) > 1 else eot, "pad_token_id": eot,
           **(generation or {})}
    out.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(out.parent)  # what an export killed earlier left beside its target
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.{os.getpid()}.", suffix=".tmp", dir=out.parent))
    try:
        with naming(out):  # a full disk names the directory being exported, not a bare errno
            names = write_weights(state, tmp, max_shard_bytes)
            for name, obj in {"config.json": config, "generation_config.json": gen, **files_json}.items():
                (tmp / name).write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
            (tmp / "README.md").write_text(card, encoding="utf-8")
        for f in tmp.iterdir():  # readable by whoever the directory is shared with, as a plain file write would be
            os.chmod(f, 0o644)
        os.chmod(tmp, 0o755)
        if out.exists():
            out.rmdir()  # empty (check_out); rename cannot replace a directory on every platform
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return sorted(names + list(files_json) + ["config.json", "generation_config.json", "README.md"])


def is_hf_dir(path: str | Path) -> bool:
    return Path(path).is_dir() and (Path(path) / "config.json").is_file()


def read_hf_config(path: Path, key: str) -> dict[str, Any]:
    if not is_hf_dir(path):
        raise ConfigError(f"{key}: {path} is not a model directory (no config.json)")
    try:
        return json.loads((path / "config.json").read_text())
    except json.JSONDecodeError as e:
        raise ConfigError(f"{key}: {path / 'config.json'} is not JSON ({e})") from e


def hf_model_config(path: str | Path, base: ModelConfig, key: str = "init_from") -> ModelConfig:
    """The ModelConfig of an HF DeepseekV3/V2 directory (training-only fields from `base`)."""
    path = Path(path)
    cfg = model_config_from_hf(read_hf_config(path, key), base, f"{key}: {path / 'config.json'}")
    return dataclasses.replace(cfg, name=path.resolve().name)


def load_hf_weights(model: MoETransformer, path: str | Path, key: str = "init_from") -> None:
    """Copy a directory's weights into `model` (built from hf_model_config); every tensor must match."""
    try:
        state = from_hf_state_dict(read_weights(Path(path)), model.cfg)
    except ConfigError as e:
        raise ConfigError(f"{key}: {path}: {e}") from e
    own = model.state_dict()
    missing = sorted(k for k in own if k not in state and not k.endswith("tokens_per_expert"))
    unexpected = sorted(k for k in state if k not in own)
    if missing or unexpected:
        raise ConfigError(f"{key}: {path} does not hold this model's weights (missing {missing[:3]}, unexpected "
                          f"{unexpected[:3]})")
    for k, v in state.items():
        if v.shape != own[k].shape:
            raise ConfigError(f"{key}: {path}: {k} has shape {tuple(v.shape)}, the config says {tuple(own[k].shape)}")
    model.load_state_dict({k: v.to(own[k].dtype) for k, v in state.items()}, strict=False)


def load_hf_dir(path: str | Path, base: ModelConfig | None = None, key: str = "ckpt"
                ) -> tuple[MoETransformer, Tokenizer | None, ModelConfig]:
    """(model in fp32, its tokenizer or None, its config) from an exported or compatible HF directory."""
    path = Path(path)
    cfg = hf_model_config(path, base or ModelConfig(), key)
    model = MoETransformer(cfg)
    load_hf_weights(model, path, key)
    tok = load_tokenizer(path / "tokenizer.json", key) if (path / "tokenizer.json").is_file() else None
    return model, tok, cfg
