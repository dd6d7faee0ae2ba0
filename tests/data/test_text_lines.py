import pytest

from moe_lm.data.text_lines import IGNORE_INDEX, CircularWindows, collate, encode_lines, line_stream, read_lines
from moe_lm.data.bpe import EOT, train_bpe


def test_collate_shifts_targets_by_one_and_ignores_padding():
    batch = collate([[0, 5, 6, 7, 0], [0, 9, 0]], pad_id=0)
    assert batch["input_ids"].tolist() == [[0, 5, 6, 7], [0, 9, 0, 0]]
    assert batch["targets"].tolist() == [[5, 6, 7, 0], [9, 0, IGNORE_INDEX, IGNORE_INDEX]]


def test_lines_are_wrapped_in_eot_and_round_trip(tmp_path):
    lines = ["the cat sat on the mat.", "the dog ran, and ran; and ran!", "caf\u00e9 \u2014 na\u00efve \U0001F600"]
    tok = train_bpe(lines * 3, 300)
    eot = tok.token_to_id(EOT)
    samples = encode_lines(lines, tok, seq_len=64)
    for line, s in zip(lines, samples):
        assert s[0] == eot and s[-1] == eot
        assert tok.decode(s[1:-1]) == line  # byte-level BPE: exact round trip
    short = encode_lines(lines, tok, seq_len=4)
    assert all(len(s) == 5 for s in short)  # seq_len + 1 tokens at most


def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="data.path"):
        read_lines(tmp_path / "nope.txt")
    (tmp_path / "empty.txt").write_text("\n\n")
    with pytest.raises(ValueError, match="no non-empty lines"):
        read_lines(tmp_path / "empty.txt")


def test_circular_windows_cover_every_offset_and_wrap():
    ds = CircularWindows([10, 11, 12, 13, 14], width=3)
    assert len(ds) == 5
    assert [ds[i] for i in range(5)] == [[10, 11, 12], [11, 12, 13], [12, 13, 14], [13, 14, 10], [14, 10, 11]]


def test_line_stream_separates_lines_with_eot_in_file_order():
    lines = ["alpha beta", "gamma delta"]
    tok = train_bpe(lines * 2, 300)
    eot = tok.token_to_id(EOT)
    stream = line_stream(lines, tok)
    assert stream[0] == eot and stream.count(eot) == 2
    second = stream.index(eot, 1)
    assert tok.decode(stream[1:second]) == "alpha beta" and tok.decode(stream[second + 1:]) == "gamma delta"


def test_circular_windows_at_given_offsets_wrap_a_stream_shorter_than_the_window():
    ds = CircularWindows([10, 11, 12], width=7, offsets=[0, 2])
    assert len(ds) == 2
    assert [ds[0], ds[1]] == [[10, 11, 12, 10, 11, 12, 10], [12, 10, 11, 12, 10, 11, 12]]


def test_aligned_samples_start_at_each_line_and_follow_file_order(tmp_path):
    from moe_lm.config import LinesDataConfig
    from moe_lm.data.text_lines import TextLinesDataModule

    lines = ["alpha beta gamma", "delta epsilon", "zeta eta theta iota"]
    (tmp_path / "t.txt").write_text("\n".join(lines) + "\n")
    tok = train_bpe(lines * 2, 300)
    eot = tok.token_to_id(EOT)
    dm = TextLinesDataModule(LinesDataConfig(path=str(tmp_path / "t.txt"), sampling="aligned", seq_len=12, batch_size=2),
                             tok, seed=0)
    assert len(dm.train_set) == len(dm.eval_set) == 3
    for i, sample in enumerate(dm.eval_set):
        assert len(sample) == 13 and sample[0] == eot
        text = tok.decode(sample, skip_special_tokens=False).split(EOT)[1:]
        want = [lines[(i + j) % 3] for j in range(len(text))]
        assert text[:-1] == want[:-1] and want[-1].startswith(text[-1])  # whole lines in order, the last one cut
    batch = next(iter(dm.train_dataloader()))
    assert batch["input_ids"].shape == (2, 12) and (batch["input_ids"][:, 0] == eot).all()
    assert batch["targets"][:, :-1].tolist() == batch["input_ids"][:, 1:].tolist()


def test_lines_end_at_lf_crlf_or_cr_and_unicode_separators_stay_inside_a_line(tmp_path):
    p = tmp_path / "lines.txt"
    p.write_bytes("one\r\ntwo\rthree\nfour \u2028 still four\u2029 and\x85 more\n".encode())
    assert read_lines(p) == ["one", "two", "three", "four \u2028 still four\u2029 and\x85 more"]


def test_non_utf8_file_names_the_byte_and_offset(tmp_path):
    from moe_lm.config import ConfigError

    p = tmp_path / "latin1.txt"
    p.write_bytes(b"ok\ncaf\xe9\n")
    with pytest.raises(ConfigError, match=r"data.path: .* is not UTF-8 text \(byte 0xe9 at offset 6\)"):
        read_lines(p)
