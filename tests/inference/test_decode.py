import pytest
import torch

from moe_lm.inference.decode import (_left_pad, _prefill_mask, column_major_weights, generate, generate_ids,
                                    one_row_matmul_options)
from moe_lm.model import MoETransformer
from moe_lm.model.cache import KVCache
from moe_lm.config import SamplingConfig


@pytest.mark.parametrize("attention", ["mla", "gqa"])
def test_padded_batch_with_cache_equals_each_prompt_alone(attention, make_model_cfg):
    model = MoETransformer(make_model_cfg(attention=attention)).eval()
    prompts = [[1, 2, 3, 4, 5, 6, 7], [8, 9], [10, 11, 12, 13]]
    ids, valid = _left_pad(prompts, 0, torch.device("cpu"))
    positions = (valid.long().cumsum(-1) - 1).clamp_min(0)
    cache = KVCache(model.cfg.n_layers)
    steps = [model(ids, cache=cache, positions=positions, attn_mask=_prefill_mask(valid)).logits[:, -1]]
    nxt = torch.tensor([[20], [21], [22]])
    pos = positions[:, -1:] + 1
    seqs = [p[:] for p in prompts]
    for step in range(64):
        valid = torch.cat([valid, torch.ones(3, 1, dtype=torch.bool)], 1)
        steps.append(model(nxt, cache=cache, positions=pos, attn_mask=valid[:, None, None, :]).logits[:, -1])
        for i in range(3):
            seqs[i].append(int(nxt[i]))
        pos = pos + 1
        nxt = (nxt * 7 + step) % 101
    for i, p in enumerate(prompts):  # reference: full recomputation of each row alone, no cache
        full = model(torch.tensor([seqs[i]])).logits[0]
        ref = full[len(p) - 1:]  # logits after the prompt, then after each appended token
        got = torch.stack([s[i] for s in steps])
        torch.testing.assert_close(got, ref, atol=1e-4, rtol=1e-4)


def test_greedy_generation_matches_recompute_and_seed_reproduces(make_model_cfg):
    model = MoETransformer(make_model_cfg()).eval()
    prompt = [3, 1, 4, 1, 5]
    (got,) = list(generate_ids(model, [prompt], SamplingConfig(max_new_tokens=20, temperature=0.0)))
    seq = prompt[:]
    for _ in range(20):
        seq.append(int(model(torch.tensor([seq])).logits[0, -1].argmax()))
    assert got == seq[len(prompt):]
    cfg = SamplingConfig(max_new_tokens=15, temperature=1.0, seed=7)
    a = list(generate_ids(model, [prompt, [2, 7]], cfg))
    b = list(generate_ids(model, [prompt, [2, 7]], cfg))
    assert a == b


def test_text_api_with_stop_string(make_model_cfg):
    from moe_lm.data.bpe import train_bpe

    tok = train_bpe(["hello world, hello there. general kenobi!"] * 5, 300)
    model = MoETransformer(make_model_cfg(vocab_size=tok.get_vocab_size())).eval()
    outs = generate(model, tok, ["hello", "general kenobi"], max_new_tokens=12, temperature=0.0)
    assert len(outs) == 2 and all(isinstance(o, str) for o in outs)
    first = outs[0]
    if len(first) > 1:
        stop = first[1]
        cut = generate(model, tok, ["hello"], max_new_tokens=12, temperature=0.0, stop=[stop])[0]
        assert cut == first.split(stop)[0]


def test_logit_lens_last_layer_equals_model_output_and_routing_is_reported(make_model_cfg):
    from moe_lm.inference.logit_lens import logit_lens

    cfg = make_model_cfg(n_layers=3, first_k_dense=1)
    model = MoETransformer(cfg).eval()
    ids = [1, 2, 3, 4]
    lens, experts, weights = logit_lens(model, ids, top=5)
    assert len(lens) == 3
    probs = model(torch.tensor([ids])).logits[0].softmax(-1)
    top_p, top_i = probs.topk(5, dim=-1)
    torch.testing.assert_close(lens[-1][0], top_i)
    torch.testing.assert_close(lens[-1][1], top_p)
    assert experts.shape == (2, 4, cfg.top_k) and weights.shape == (2, 4, cfg.top_k)
    torch.testing.assert_close(weights.sum(-1), torch.ones(2, 4))  # normalised top-k weights


def test_inspect_report_is_readable_text_with_expert_domains(make_model_cfg):
    from moe_lm.data.bpe import train_bpe
    import re

    from moe_lm.inference.logit_lens import expert_names, report, token_text

    tok = train_bpe(["the quick brown fox jumps over the lazy dog"] * 20, 300)
    model = MoETransformer(make_model_cfg(vocab_size=512)).eval()  # more ids than the tokenizer has
    run_cfg = {"data": {"domains": {"math": {"expert": 0}, "code": {"expert": 1}, "web": {"expert": None}}}}
    assert expert_names(run_cfg) == {0: "math", 1: "code"} and expert_names(None) == {}
    text = report(model, tok, "the quick fox", top=3, expert_names=expert_names(run_cfg))
    lines = text.splitlines()
    assert lines[0].startswith("model ") and len(lines[0]) < 120 and "ModelConfig(" not in text
    assert "experts: 0 math, 1 code" in text
    assert "token 2: ' quick'" in text and "\u0120" not in text  # decoded text, not the byte-level spelling
    assert token_text(tok, 511) == "<id 511: no token>"  # ids past the tokenizer's vocabulary are named as such
    routes = ", ".join(line.split("| experts ")[1] for line in lines if "| experts " in line)
    assert routes and not re.search(r"(^|, )0 (?!math)", routes) and not re.search(r"(^|, )1 (?!code)", routes)


def test_prompt_longer_than_context_keeps_its_end_and_room_to_generate(make_model_cfg):
    model = MoETransformer(make_model_cfg(max_seq_len=32)).eval()
    long_prompt = list(range(1, 41))
    cfg = SamplingConfig(max_new_tokens=10, temperature=0.0)
    with pytest.warns(UserWarning, match=r"prompt: 40 tokens do not fit the model's context of 32.*last 22"):
        (out,) = list(generate_ids(model, [long_prompt], cfg))
    assert len(out) == 10  # the whole max_new_tokens, not one token
    (same,) = list(generate_ids(model, [long_prompt[-22:]], cfg))
    assert out == same  # exactly the continuation of the prompt's last 22 tokens
    with pytest.warns(UserWarning, match="max_new_tokens: 25-token prompt [+] 10 exceeds .* stops after 7 tokens"):
        (short,) = list(generate_ids(model, [long_prompt[:25]], cfg))
    assert len(short) == 7


def test_chat_template_uses_role_tokens_or_plain_text():
    from moe_lm.data.bpe import ROLE_TOKENS, SPECIAL_TOKENS, chat_text, train_bpe

    msgs = [("user", "hi"), ("assistant", "hello"), ("user", "how are you?")]
    plain = train_bpe(["hi hello how are you"] * 3, 300)
    assert chat_text(msgs, plain) == "User: hi\nAssistant: hello\nUser: how are you?\nAssistant:"
    roles = train_bpe(["hi hello how are you"] * 3, 300, SPECIAL_TOKENS + list(ROLE_TOKENS.values()))
    text = chat_text(msgs, roles)
    assert text == "<|user|>hi<|assistant|>hello<|user|>how are you?<|assistant|>"
    ids = roles.encode(text).ids
    assert ids.count(roles.token_to_id("<|assistant|>")) == 2  # role markers are single special tokens


def test_streaming_never_writes_any_part_of_a_stop_string(make_model_cfg):
    from moe_lm.inference.decode import stop_prefix_len, stream_text

    class Chars:  # one character per token id
        def decode(self, ids):
            return "".join(chr(97 + i % 26) for i in ids)

    model = MoETransformer(make_model_cfg()).eval()
    cfg = SamplingConfig(max_new_tokens=12, temperature=0)
    full = Chars().decode(next(iter(generate_ids(model, [[1, 2, 3]], cfg))))
    stop = full[5:8]
    chunks = []
    got = stream_text(model, Chars(), [1, 2, 3], SamplingConfig(max_new_tokens=12, temperature=0, stop=[stop]), None,
                      chunks.append)
    assert got == full[: full.index(stop)] and "".join(chunks) == got + "\n"
    assert stop_prefix_len("abcli", ["liquor"]) == 2 and stop_prefix_len("abc", ["liquor"]) == 0


def test_generation_runs_no_forward_whose_logits_are_discarded(make_model_cfg):
    model = MoETransformer(make_model_cfg()).eval()
    calls = []
    model.register_forward_hook(lambda *a: calls.append(1))
    (out,) = list(generate_ids(model, [[1, 2, 3]], SamplingConfig(max_new_tokens=5, temperature=0)))
    assert len(out) == 5 and len(calls) == 1 + 4  # the prefill, then one forward per new token but the last


def _count_graphs(monkeypatch) -> list:
    """torch.compile with a backend that runs the traced graph as it is and records each graph it is handed."""
    graphs, compile_ = [], torch.compile

    def backend(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    monkeypatch.setattr(torch, "compile", lambda fn, **kw: compile_(fn, backend=backend, dynamic=False))
    return graphs


@pytest.mark.parametrize("overrides", [dict(), dict(attention="gqa"), dict(sliding_window=4, window_pattern="LG")],
                         ids=["mla", "gqa", "window"])
def test_compiled_step_on_the_static_cache_gives_the_same_tokens_from_one_graph(overrides, make_model_cfg,
                                                                                monkeypatch):
    """sampling compile=true: the same tokens as the eager path (left-padded batch, greedy and seeded sampling), the
    whole one-token step traced as one graph, and that graph reused by a later call of another length (the cache
    length is bucketed, the slot a step writes is a tensor): no graph break, no recompilation."""
    torch.manual_seed(0)
    model = MoETransformer(make_model_cfg(**overrides)).eval()
    prompts = [[1, 2, 3, 4, 5, 6, 7], [8, 9], [10, 11, 12, 13]]
    greedy, sampled = SamplingConfig(max_new_tokens=30, temperature=0.0), SamplingConfig(max_new_tokens=20, seed=3)
    eager = [list(generate_ids(model, prompts, c)) for c in (greedy, sampled)]
    graphs = _count_graphs(monkeypatch)
    compiled = [list(generate_ids(model, prompts, SamplingConfig(**{**c.__dict__, "compile": True})))
                for c in (greedy, sampled)]
    assert compiled == eager
    assert len(graphs) == 1


@pytest.mark.slow
@pytest.mark.parametrize("prompts", [[[1, 2, 3, 4, 5]], [[1, 2, 3, 4, 5], [6, 7]]], ids=["batch1", "batch2"])
def test_inductor_compiled_decoding_gives_the_eager_tokens(prompts, make_model_cfg):
    """Batch 1 runs its one-row matmuls as inductor kernels (one_row_matmul_options), batch 2 through BLAS."""
    torch.manual_seed(0)
    model = MoETransformer(make_model_cfg()).eval()
    eager = list(generate_ids(model, prompts, SamplingConfig(max_new_tokens=24, temperature=0.0)))
    compiled = list(generate_ids(model, prompts, SamplingConfig(max_new_tokens=24, temperature=0.0, compile=True)))
    assert compiled == eager


def test_column_major_weights_keep_the_function_and_the_tokens(make_model_cfg):
    torch.manual_seed(0)
    model = MoETransformer(make_model_cfg()).eval()
    x = torch.randint(0, model.cfg.vocab_size, (2, 12))
    with torch.no_grad():
        ref = model(x).logits
    tokens = list(generate_ids(model, [[1, 2, 3]], SamplingConfig(max_new_tokens=16, temperature=0.0)))
    column_major_weights(model)
    w = model.layers[0].mlp.experts.down_proj  # (E, D, I), each expert's matrix now column-major
    assert w.stride()[1:] == (1, w.shape[1]) and model.lm_head.weight.stride() == (1, model.cfg.vocab_size)
    with torch.no_grad():
        torch.testing.assert_close(model(x).logits, ref, atol=1e-5, rtol=1e-5)
    assert list(generate_ids(model, [[1, 2, 3]], SamplingConfig(max_new_tokens=16, temperature=0.0))) == tokens


def test_compiled_cpu_step_computes_a_one_row_head_matmul_without_blas():
    """one_row_matmul_options: a (1, D) x (D, V) product as wide as a 32k vocabulary head becomes inductor's own
    multiply-and-sum kernel (no extern mm call in the generated code), with the plain product's values; compiled
    without the options, the same function calls BLAS."""
    from torch._inductor.utils import run_and_get_code

    options = one_row_matmul_options()
    if not options:
        pytest.skip("this torch's inductor has no decompose_mm_pass")
    torch.manual_seed(0)
    x, w, b = torch.randn(1, 64), torch.randn(32000, 64), torch.randn(32000)

    def head(x, w, b):
        return torch.nn.functional.linear(x, w) + torch.nn.functional.linear(x, w, b)

    def extern_mm_calls(opts):
        torch._dynamo.reset()
        out, code = run_and_get_code(torch.compile(head, dynamic=False, options=opts), x, w, b)
        torch.testing.assert_close(out, head(x, w, b), atol=1e-4, rtol=1e-5)
        return sum(c.count("extern_kernels.mm(") + c.count("extern_kernels.addmm(") for c in code)

    assert extern_mm_calls(options) == 0
    assert extern_mm_calls({}) == 2
    torch._dynamo.reset()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (none here)")
def test_cuda_graph_decoding_gives_the_eager_tokens(make_model_cfg):
    """On a GPU compile=true replays the step as a CUDA graph ("reduce-overhead"), the cache mutated in place."""
    torch.manual_seed(0)
    model = MoETransformer(make_model_cfg()).cuda().eval()
    prompts = [[1, 2, 3, 4, 5], [6, 7]]
    eager = list(generate_ids(model, prompts, SamplingConfig(max_new_tokens=24, temperature=0.0)))
    for _ in range(2):  # the second call replays the recorded graph
        compiled = list(generate_ids(model, prompts, SamplingConfig(max_new_tokens=24, temperature=0.0, compile=True)))
        assert compiled == eager
