"""The README.md of an exported model directory: what the model is, how it was trained, what was measured.

Everything in it comes from the checkpoint (the run's resolved config) and from the files the run wrote beside
it (`result.json`, `eval/eval.json`), when they exist; nothing is estimated.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from moe_lm.config import ModelConfig
from moe_lm.model.hf_mapping import ARCHITECTURES, hf_model_type


def run_files(ckpt: Path) -> dict[str, Any]:
    """result.json and eval/eval.json of the run the checkpoint belongs to (<run>/checkpoints/x.ckpt), if any."""
    run = ckpt.resolve().parent.parent
    found = {}
    for name in ("result.json", "eval/eval.json"):
        try:
            found[name] = json.loads((run / name).read_text())
        except (OSError, json.JSONDecodeError):
            continue
    return found


# settings that hold paths of the machine the model was trained on: not the card's business
LOCAL_PATHS = {"data": ("path", "local_root", "shards", "hub_mirror"), "paths": ("data_root", "resources"),
               "prepare": ("out", "tokenizer"), "checkpoint": ("dir", "resume"), "eval": ("heldout_root",),
               "": ("out_dir", "init_from")}


def without_local_paths(run_cfg: dict[str, Any]) -> dict[str, Any]:
    """The run's config with every local path replaced by its file name (a data file) or `<local path>`."""
    cfg = json.loads(json.dumps(run_cfg, default=str))  # a deep copy of plain data
    for group, keys in LOCAL_PATHS.items():
        node = cfg if not group else cfg.get(group)
        for key in keys if isinstance(node, dict) else ():
            if node.get(key):
                node[key] = Path(str(node[key])).name if (group, key) == ("data", "path") else "<local path>"
    return cfg


def _data_lines(data: dict[str, Any]) -> list[str]:
    if "domains" not in data:
        name = Path(str(data.get("path") or "")).name or "the overfit demo lines"
        return [f"- `{name}`: a text file, one document per line"]
    lines = []
    for name, d in data["domains"].items():
        sources = ", ".join(s.get("hub_id") or s.get("local_file") or "?" for s in d.get("sources", [])) or "-"
        expert = f", expert {d['expert']}" if d.get("expert") is not None else ""
        lines.append(f"- {name}: {sources}{expert}")
    return lines


def _count(n: float) -> str:
    return f"{n / 1e9:.2f}B" if n >= 1e9 else f"{n / 1e6:.1f}M" if n >= 1e6 else f"{n:,.0f}"


def _measured(files: dict[str, Any]) -> list[str]:
    lines = []
    result = files.get("result.json", {})
    for key, label in (("final_train_loss", "train loss (last batch)"), ("train_loss_full_pass", "train loss (full pass)"),
                       ("steps", "optimizer steps"), ("tokens", "training tokens"), ("wall_s", "wall time (s)"),
                       ("reproduced", "lines reproduced (greedy, from 8-token prompts)")):
        if key in result:
            value = result[key]
            lines.append(f"| {label} | {value:.4g} |" if isinstance(value, float) else f"| {label} | {value} |")
    for r in files.get("eval/eval.json", {}).get("domains", []):
        lines.append(f"| held-out loss / bits per byte, {r['domain']} (moe_lm.evaluate) | {r['loss']:.4f} / {r['bpb']:.4f} |")
    return ["| measured | value |", "|---|---|"] + lines if lines else ["No measurements were found beside the checkpoint."]


def model_card(cfg: ModelConfig, run_cfg: dict[str, Any], params: dict[str, int], ckpt: Path, repo_name: str) -> str:
    arch = ARCHITECTURES[hf_model_type(cfg)]
    moe = cfg.first_k_dense < cfg.n_layers
    shape = (f"{cfg.n_layers} layers, d_model {cfg.d_model}, {cfg.n_heads} heads, MLA (kv_lora_rank "
             f"{cfg.kv_lora_rank}, decoupled RoPE dim {cfg.qk_rope_head_dim})")
    if moe:
        shape += (f"; {cfg.n_routed_experts} routed experts of width {cfg.moe_intermediate_size}, top-{cfg.top_k}, "
                  f"{cfg.n_shared_experts} shared; {cfg.scoring} router")
    data = run_cfg.get("data", {})
    trainer, opt = run_cfg.get("trainer", {}), run_cfg.get("optimizer", {})
    result = run_files(ckpt).get("result.json", {})
    steps = result.get("steps", trainer.get("max_steps", 0))  # what the run did, else what it was set to do
    tokens = result.get("tokens") or (steps * data.get("batch_size", 0) * data.get("seq_len", 0)
                                      * trainer.get("accumulate_grad_batches", 1))
    return "\n".join([
        "---", "library_name: transformers", f"tags: [moe_lm, {'mixture-of-experts' if moe else 'dense'}, "
        f"{hf_model_type(cfg)}]", "---", "", f"# {repo_name}", "",
        f"A {params['total'] / 1e6:.1f}M-parameter decoder-only language model ({params['active_per_token'] / 1e6:.1f}M "
        f"active per token) trained from scratch with moe_lm and exported as `{arch}`: {shape}.", "",
        "```python", "from transformers import AutoModelForCausalLM, AutoTokenizer", "",
        f'tok = AutoTokenizer.from_pretrained("{repo_name}")',
        f'model = AutoModelForCausalLM.from_pretrained("{repo_name}")',
        "# documents were trained after <|endoftext|> (the BOS token): start prompts with it, as moe_lm.generate does",
        'ids = tok(tok.bos_token + "Question: what is 2+2?", return_tensors="pt")',
        "out = model.generate(**ids, max_new_tokens=32, do_sample=False)",
        "print(tok.decode(out[0]))", "```", "",
        "## Training", "",
        f"{steps} optimizer steps of {data.get('batch_size', '?')} x {data.get('seq_len', '?')} "
        f"tokens ({_count(tokens)} tokens), AdamW lr {opt.get('lr', '?')}, "
        f"{run_cfg.get('scheduler', {}).get('name', '?')} schedule, {run_cfg.get('precision', {}).get('name', '?')} "
        f"precision, seed {run_cfg.get('seed', '?')}. Data:", "", *_data_lines(data), "",
        "## Measured", "", *_measured(run_files(ckpt)), "",
        "## The run's configuration", "", "(local paths left out)", "", "```yaml",
        yaml.safe_dump(without_local_paths(run_cfg), sort_keys=False).rstrip(), "```", ""])
