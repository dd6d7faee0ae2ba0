"""One formatter per upstream record schema: record (dict) -> training text, or a Skip with its reason.

Record formatters take one row. `oasst1` rows are messages of conversation trees, so its formatter takes
all rows of a source at once (`THREAD_FORMATTERS`) and rebuilds one conversation per tree.
`format_records(..., keyed=True)` pairs each document with its group (`GROUP_FIELDS`): the repository of a code
file, the conversation tree of an oasst1 thread, else the document's own text. prepare keeps whole groups apart
for the held-out split.
Chat-like sources (oasst1, dolly, flan) share the role-token chat template of `render_chat`.
"""

from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator, Union

from moe_lm.config import ConfigError, DomainsDataConfig

ROLE_TOKENS = {"system": "<|system|>", "user": "<|user|>", "assistant": "<|assistant|>"}


@dataclass(frozen=True)
class Skip:
    reason: str


Formatted = Union[str, Skip]


def render_chat(messages: list[tuple[str, str]], roles: bool = True) -> str:
    """`<|user|>hi<|assistant|>hello` with role tokens, else a `User: hi` plain-text template."""
    if roles:
        return "".join(f"{ROLE_TOKENS[role]}{text}" for role, text in messages)
    return "".join(f"{role.capitalize()}: {text}\n" for role, text in messages)


def _field(rec: dict[str, Any], name: str) -> str | Skip:
    value = rec.get(name)
    if value is None:
        return Skip(f"missing field '{name}'")
    if not isinstance(value, str):
        return Skip(f"field '{name}' is not text")
    if not value.strip():
        return Skip(f"empty field '{name}'")
    return value


def _fields(rec: dict[str, Any], *names: str) -> list[str] | Skip:
    values = [_field(rec, n) for n in names]
    for v in values:
        if isinstance(v, Skip):
            return v
    return values  # type: ignore[return-value]


_CALC = re.compile(r"<<[^>]*>>")


def gsm8k(rec: dict[str, Any]) -> Formatted:
    v = _fields(rec, "question", "answer")
    if isinstance(v, Skip):
        return v
    q, a = v
    return f"Question: {q.strip()}\nAnswer: {_CALC.sub('', a).strip()}"  # drop calculator annotations


def question_answer(rec: dict[str, Any]) -> Formatted:
    v = _fields(rec, "question", "answer")
    return v if isinstance(v, Skip) else f"Question: {v[0].strip()}\nAnswer: {v[1].strip()}"


def code_file(rec: dict[str, Any]) -> Formatted:
    """codeparrot-clean / the-stack-v2 with inline `content`; a `# repo/path` header line first."""
    if rec.get("content") is None and rec.get("blob_id"):
        return Skip("no inline content (the-stack-v2: fetch blobs by blob_id, see docs/data.md)")
    content = _field(rec, "content")
    if isinstance(content, Skip):
        return content
    path = f"{rec.get('repo_name') or ''}/{(rec.get('path') or '').lstrip('/')}".strip("/")
    return f"# {path}\n{content}" if path else content


def text(rec: dict[str, Any]) -> Formatted:
    return _field(rec, "text")


def arxiv(rec: dict[str, Any]) -> Formatted:
    v = _fields(rec, "title", "abstract")
    if isinstance(v, Skip):
        return v
    title, abstract = (" ".join(x.split()) for x in v)  # snapshot rows are hard-wrapped
    body = rec.get("full_text") if isinstance(rec.get("full_text"), str) and rec["full_text"].strip() else abstract
    return f"{title}\n\n{body}"


def big_patent(rec: dict[str, Any]) -> Formatted:
    v = _fields(rec, "abstract", "description")
    return v if isinstance(v, Skip) else f"{v[0].strip()}\n\n{v[1].strip()}"


def dolly(rec: dict[str, Any]) -> Formatted:
    v = _fields(rec, "instruction", "response")
    if isinstance(v, Skip):
        return v
    context = rec.get("context") if isinstance(rec.get("context"), str) else ""
    prompt = v[0].strip() + (f"\n\n{context.strip()}" if context.strip() else "")
    return render_chat([("user", prompt), ("assistant", v[1].strip())])


def flan(rec: dict[str, Any]) -> Formatted:
    v = _fields(rec, "inputs", "targets")
    return v if isinstance(v, Skip) else render_chat([("user", v[0].strip()), ("assistant", v[1].strip())])


def oasst1_threads(rows: Iterable[dict[str, Any]]) -> Iterator[Formatted]:
    """Rebuild each conversation tree; follow the best-ranked reply (rank 0, else the first) from the root."""
    for _, doc in oasst1_keyed_threads(rows):
        yield doc


def oasst1_keyed_threads(rows: Iterable[dict[str, Any]]) -> Iterator[tuple[Any, Formatted]]:
    """(message_tree_id, conversation) per tree, as `oasst1_threads`."""
    by_tree: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        if not isinstance(row.get("message_tree_id"), str) or not isinstance(row.get("message_id"), str):
            yield None, Skip("missing field 'message_tree_id' or 'message_id'")
            continue
        by_tree[row["message_tree_id"]].append(row)
    for tree_id, tree in by_tree.items():
        children: dict[Any, list[dict[str, Any]]] = defaultdict(list)
        for m in tree:
            children[m.get("parent_id")].append(m)
        roots = children.get(None, [])
        if len(roots) != 1:
            yield tree_id, Skip("tree without a single root message")
            continue
        messages, node = [], roots[0]
        while node is not None:
            if not isinstance(node.get("text"), str) or not node["text"].strip():
                break
            messages.append(("user" if node.get("role") == "prompter" else "assistant", node["text"].strip()))
            replies = sorted(children.get(node["message_id"], []),
                             key=lambda m: m["rank"] if isinstance(m.get("rank"), (int, float)) else 1e9)
            node = replies[0] if replies else None
        if len(messages) < 2:
            yield tree_id, Skip("conversation without a reply")
            continue
        yield tree_id, render_chat(messages)


RECORD_FORMATTERS: dict[str, Callable[[dict[str, Any]], Formatted]] = {
    "gsm8k": gsm8k, "math_dataset": question_answer, "code": code_file, "text": text, "arxiv": arxiv,
    "big_patent": big_patent, "dolly": dolly, "flan": flan,
}
THREAD_FORMATTERS: dict[str, Callable[[Iterable[dict[str, Any]]], Iterator[tuple[Any, Formatted]]]] = {
    "oasst1": oasst1_keyed_threads}
FORMATTERS = sorted(RECORD_FORMATTERS) + sorted(THREAD_FORMATTERS)
# the record field whose value groups documents (a repository's files); thread formatters group by tree; every
# other document is its own group (its text is the key)
GROUP_FIELDS = {"code": "repo_name"}
GROUPS = {"code": "repository (repo_name)", "oasst1": "conversation tree (message_tree_id)"}


def format_records(name: str, rows: Iterable[dict[str, Any]], keyed: bool = False) -> Iterator[Any]:
    """Formatted documents (or Skips); with keyed, (group key, document) pairs."""
    if name in THREAD_FORMATTERS:
        for key, doc in THREAD_FORMATTERS[name](rows):
            yield (key if key is not None else doc, doc) if keyed else doc
    elif name in RECORD_FORMATTERS:
        fn, field = RECORD_FORMATTERS[name], GROUP_FIELDS.get(name)
        for row in rows:
            doc = fn(row) if isinstance(row, dict) else Skip("record is not a JSON object")
            if keyed:
                key = row.get(field) if field and isinstance(row, dict) else None
                yield (key if isinstance(key, str) and key else doc, doc)
            else:
                yield doc
    else:
        raise ConfigError(f"formatter: unknown {name!r}; one of {FORMATTERS}")


def check_formatters(data: DomainsDataConfig) -> None:
    """Every source names a known formatter (checked at start-up, before any work)."""
    for name, domain in data.domains.items():
        for i, src in enumerate(domain.sources):
            if src.formatter not in FORMATTERS:
                raise ConfigError(f"data.domains.{name}.sources[{i}].formatter: must be one of {FORMATTERS}, "
                                  f"got {src.formatter!r}")
