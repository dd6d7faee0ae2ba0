"""Every `python -m moe_lm.<command>` line in the code blocks of the README and docs/*.md, and in the Colab notebook,
composes and validates as written (transcripts that show an error, `$ ...` followed by `error:`, are the exception they document)."""

import json
import re
import shlex

import pytest

from moe_lm.cli import COMMAND_CONFIG, compose, split_text_args
PLACEHOLDERS = {"$RUN": "/tmp/run", "$c": "/tmp/x.ckpt", "PATH": "/tmp/x.ckpt", "...": ""}


def commands(text: str) -> list[str]:
    """Command lines (backslash continuations joined) that run a moe_lm module, minus documented failures."""
    lines = text.replace("\\\n", " ").splitlines() + [""]
    found = []
    for line, after in zip(lines, lines[1:]):
        m = re.search(r"python -m moe_lm\.\w+[^`#;]*", line)  # up to a comment or the shell's next command
        if m and not (line.lstrip().startswith("$") and after.startswith("error:")):
            found.append(m.group(0))
    return found


def code_blocks(markdown: str) -> str:
    return "\n".join(re.findall(r"```[a-z]*\n(.*?)```", markdown, flags=re.S))


def notebook_commands(repo) -> list[str]:
    """The notebook's shell commands with its Python values filled in as IPython does (`{expr}`), from its
    parameters cell as shipped and the run paths its set-up cell derives."""
    nb = json.loads((repo / "experiments" / "colab.ipynb").read_text())
    cells = ["".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code"]
    ns: dict = {}
    exec(next(c for c in cells if c.startswith("# Parameters")), ns)
    ns.update(shlex=shlex, RUN=f"{ns['ROOT']}/run1", TOK=f"{ns['ROOT']}/tokenizer/tokenizer.json",
              SHARDS=f"{ns['ROOT']}/shards", DEVICE="cpu", COMPILE="")
    return [re.sub(r"\{([^{}]+)\}", lambda m: str(eval(m[1], ns)), c) for c in commands("\n".join(cells))]


def documented(repo) -> list[tuple[str, str]]:
    pages = [repo / "README.md", *sorted((repo / "docs").glob("*.md"))]
    found = [(str(p.relative_to(repo)), c) for p in pages for c in commands(code_blocks(p.read_text()))]
    for path in sorted((repo / "conf").rglob("*.yaml")):  # the commands in YAML comments
        comments = "\n".join(line.split("#", 1)[1] for line in path.read_text().splitlines() if "#" in line)
        found += [(str(path.relative_to(repo)), c) for c in commands(comments) if "=" in c]  # not a bare name
    return found + [("colab.ipynb", c) for c in notebook_commands(repo)]


def test_readme_docs_and_notebook_commands_compose(repo_root):
    found = documented(repo_root)
    sources = {src for src, _ in found}
    assert len(found) >= 30 and {"README.md", "colab.ipynb", "docs/training.md", "docs/export.md",
                                 "conf/experiment/recipe_t4.yaml"} <= sources
    failures = []
    for src, line in found:
        for k, v in PLACEHOLDERS.items():
            line = line.replace(k, v)
        words = shlex.split(line)
        command = words[2].split(".")[1]
        args = [w for w in words[3:] if not w.startswith(("-", "hydra.", "hydra/")) and "=" in w]  # hydra: not the job
        if "-m" in words:  # a sweep: each run takes one value of every comma list
            args = [re.sub(r"=([^,\[]+),\S+", r"=\1", a) for a in args]
        overrides, _ = split_text_args(args, ("prompt",))
        try:
            compose(overrides, COMMAND_CONFIG[command])
        except Exception as e:  # noqa: BLE001 - collect them all
            failures.append(f"{src}: {line}\n    {type(e).__name__}: {e}")
    assert not failures, "\n".join(failures)


@pytest.mark.parametrize("command", sorted(COMMAND_CONFIG))
def test_every_command_is_documented_in_the_readme(repo_root, command):
    assert f"python -m moe_lm.{command}" in (repo_root / "README.md").read_text()


def error_hints(package) -> list[tuple[str, str]]:
    """(file:line, command) for every `python -m moe_lm.<command> ...` inside a raised error or a warning of the
    package; formatted values become X (a path or a number the message fills in)."""
    import ast

    found = []
    for path in sorted(package.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            is_warning = (isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "warn")
            if not (isinstance(node, ast.Raise) or is_warning):
                continue
            for part in ast.walk(node):
                if isinstance(part, ast.JoinedStr):
                    text = "".join(v.value if isinstance(v, ast.Constant) else "X" for v in part.values)
                elif isinstance(part, ast.Constant) and isinstance(part.value, str):
                    text = part.value
                else:
                    continue
                for m in re.finditer(r"python -m moe_lm\.\w+(?: [\w.+/=\[\],-]+=[^\s;)]*)*", text):
                    found.append((f"{path.name}:{node.lineno}", m.group(0)))
    return list(dict.fromkeys(found))


def test_every_command_an_error_message_suggests_composes(repo_root):
    hints = error_hints(repo_root / "moe_lm")
    assert len(hints) >= 3
    failures = []
    for where, line in hints:
        words = line.split()
        command, args = words[2].split(".")[1], [w for w in words[3:] if "=" in w]
        try:
            compose([a.replace("X", "/tmp/x") for a in args], COMMAND_CONFIG[command])
        except Exception as e:  # noqa: BLE001 - collect them all
            failures.append(f"{where}: {line}\n    {type(e).__name__}: {e}")
    assert not failures, "\n".join(failures)
