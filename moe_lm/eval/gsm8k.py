"""GSM8K-style exact match (the library behind `python -m moe_lm.evaluate task=gsm8k`).

Prompt: k solved examples from a separate file, each formatted as in training (`Question: ...\\nAnswer: ...`,
calculator annotations removed), then `Question: <q>\\nAnswer:`. Greedy decoding with the KV cache, cut at the
next `Question:`. The answer is the number after the completion's `####`, else its last number; numbers are
normalised (commas, `$`, a leading `+`, trailing zeros after a decimal point, `-0`) before comparing with the
number after the reference's `####`. Accuracy comes with a 95% Wilson score interval.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any, Optional

from moe_lm.config import ConfigError
from moe_lm.data.formatters import Skip, gsm8k
from moe_lm.data.sources import read_records

NUMBER = re.compile(r"[-+]?\$?\d[\d,]*(?:\.\d+)?")
STOPS = ["\nQuestion:", "Question:"]


def normalise(number: str) -> str:
    """'1,234.50' -> '1234.5', '$-3' -> '-3', '+7.0' -> '7', '-0' -> '0'."""
    s = number.replace(",", "").replace("$", "").strip().rstrip(".")
    s = s.lstrip("+")
    if "." in s:
        s = s.rstrip("0").rstrip(".")
    return "0" if s == "-0" else s


def extract(text: str) -> tuple[Optional[str], str]:
    """(normalised answer, how it was found: '####', 'last number' or 'none')."""
    marked = re.search(r"####\s*(" + NUMBER.pattern + ")", text)
    if marked:
        return normalise(marked.group(1)), "####"
    numbers = NUMBER.findall(text)
    return (normalise(numbers[-1]), "last number") if numbers else (None, "none")


def wilson(correct: int, n: int, z: float = 1.96) -> tuple[float, float]:
    if n == 0:
        return 0.0, 1.0
    p = correct / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def load_problems(path: str, key: str, limit: int = 0) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """Records with a question and a `#### number` answer; the others counted by reason."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"{key}: no such file: {path}")
    problems, skipped = [], {}
    for rec in read_records(path):
        reason = rec.reason if isinstance(rec, Skip) else None
        if reason is None and not (isinstance(rec.get("question"), str) and isinstance(rec.get("answer"), str)):
            reason = "missing field 'question' or 'answer'"
        if reason is None and "####" not in rec["answer"]:
            reason = "answer has no '#### number'"
        if reason:
            skipped[reason] = skipped.get(reason, 0) + 1
            continue
        problems.append(rec)
        if limit and len(problems) >= limit:
            break
    if not problems:
        raise ConfigError(f"{key}: {path} holds no usable gsm8k record (skipped: {skipped or 'none'})")
    return problems, skipped


def prompt(question: str, shots: list[dict[str, Any]]) -> str:
    examples = [gsm8k(s) for s in shots]
    return "\n\n".join([*examples, f"Question: {question.strip()}\nAnswer:"])


def evaluate_gsm8k(model, tok, problems: list[dict[str, Any]], shots: list[dict[str, Any]], max_new_tokens: int,
                   batch_size: int) -> dict[str, Any]:
    """Accuracy, its 95% interval, and one prediction record per problem."""
    from rich.progress import track

    from moe_lm.inference.decode import generate

    predictions = []
    batches = [problems[i:i + batch_size] for i in range(0, len(problems), batch_size)]
    for batch in track(batches, description="gsm8k"):
        texts = generate(model, tok, [prompt(p["question"], shots) for p in batch], temperature=0.0,
                         max_new_tokens=max_new_tokens, stop=STOPS)
        for p, completion in zip(batch, texts):
            reference = normalise(p["answer"].split("####")[-1])
            answer, how = extract(completion)
            predictions.append({"question": p["question"], "reference": reference, "completion": completion,
                                "answer": answer, "extracted_by": how, "correct": answer == reference})
    correct = sum(p["correct"] for p in predictions)
    lo, hi = wilson(correct, len(predictions))
    return {"task": "gsm8k", "n": len(predictions), "correct": correct, "accuracy": correct / len(predictions),
            "ci95": [lo, hi], "shots": len(shots), "predictions": predictions}
