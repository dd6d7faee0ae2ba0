"""Prompts reach the model unchanged, whatever they hold (colons, braces, quotes, `=`, newlines, non-ASCII), from the
command line, a file or stdin, for generate and inspect (through their `cli()`, in process)."""

import io

import pytest

from moe_lm import generate, inspect
from moe_lm.data.bpe import EOT, train_bpe

PROMPT = 'Question: {"a": [1, 2], b=3} it\'s "quoted",\nsecond line\ttab — naïve café 数学 🙂 ${oc.env:HOME}'


@pytest.fixture
def received(monkeypatch):
    """Stub the checkpoint and the decoders; collect the text each command hands to the model."""
    tok = train_bpe(["some text to learn bytes from"], 300)
    got: list[str] = []
    eot = tok.token_to_id(EOT)

    def text(ids):
        return tok.decode([i for i in ids if i != eot], skip_special_tokens=False)

    monkeypatch.setattr("moe_lm.io.checkpoint.load_model", lambda *a: (object(), tok, None))
    monkeypatch.setattr("moe_lm.inference.decode.stream_text", lambda m, t, ids, *a: got.append(text(ids)) or "")
    monkeypatch.setattr("moe_lm.inference.decode.column_major_weights", lambda m: m)
    monkeypatch.setattr("moe_lm.inference.logit_lens.report", lambda m, t, prompt, *a: got.append(prompt) or "")
    return got


@pytest.mark.parametrize("command", [generate, inspect])
def test_prompt_from_argv_file_or_stdin_is_unchanged(command, received, tmp_path, monkeypatch):
    command.cli(["ckpt=x.ckpt", f"prompt={PROMPT}"])
    path = tmp_path / "prompt.txt"
    path.write_text(PROMPT + "\n", encoding="utf-8")  # the final newline an editor adds is not part of the prompt
    command.cli(["ckpt=x.ckpt", f"prompt_file={path}"])
    monkeypatch.setattr("sys.stdin", io.StringIO(PROMPT))
    command.cli(["ckpt=x.ckpt", "prompt_file=-"])
    assert received == [PROMPT] * 3


def test_prompt_and_prompt_file_together_is_an_error(capsys):
    with pytest.raises(SystemExit) as done:
        generate.cli(["ckpt=x.ckpt", "prompt=a", "prompt_file=b.txt"])
    assert done.value.code == 2 and "error: prompt_file: give prompt= or prompt_file=, not both" in capsys.readouterr().err
