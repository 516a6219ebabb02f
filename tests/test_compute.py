"""Compute accounting, the reward model's prefix KV cache, guided-step schedules and the rules
that keep guidance cheap (issue 9)."""
import pytest
import torch

from entrgi_core import DenoiseConfig, generate
from guidance import EntRGi, Expectation, NoGuidance
from rewards import HFRewardModel
from tests.conftest import PROMPTS, make_step

CFG = DenoiseConfig(steps=4, max_new_tokens=6, num_samples=2)


def test_compute_is_counted_per_prompt(dlm, rm):
    m = 2
    res = generate(dlm, PROMPTS[:2], reward=rm, guidance=EntRGi(steps=m), config=CFG)
    base = generate(dlm, PROMPTS[:2], reward=rm, guidance=None, config=CFG)
    for b, prompt in enumerate(PROMPTS[:2]):
        c, u = {k: v[b] for k, v in res.compute.items()}, {k: v[b] for k, v in base.compute.items()}
        row = len(dlm.encode_prompts([prompt])[0]) + CFG.max_new_tokens
        k, t = CFG.num_samples, CFG.steps
        assert c["dlm_forwards"] == u["dlm_forwards"] == t * k and c["dlm_tokens"] == t * k * row
        final = sum(rm.text_tokens(prompt, text) for text in res.texts[b])
        assert c["rm_forwards"] == c["rm_backwards"] == t * m * k           # guidance only, all differentiated
        assert c["rm_forward_tokens"] == c["rm_backward_tokens"] >= t * m * k * rm.template_length(prompt)
        assert c["select_calls"] == u["select_calls"] == k and c["select_tokens"] == final   # Top@1 by the reward
        assert u["rm_forwards"] == u["rm_backwards"] == u["rm_backward_tokens"] == 0
        assert c["eval_calls"] == u["eval_calls"] == 0                      # no judges, no separate selector
        flops = 2 * dlm.num_parameters * c["dlm_tokens"] + 2 * rm.num_parameters * (
            c["rm_forward_tokens"] + c["rm_backward_tokens"] + c["select_tokens"])
        assert c["flops"] == flops and c["forward_equivalents"] == pytest.approx(flops / (2 * dlm.num_parameters * row))
        assert c["forward_equivalents"] > u["forward_equivalents"] > t * k


def test_compute_does_not_depend_on_batching(dlm, rm):
    batched = generate(dlm, PROMPTS, reward=rm, guidance=EntRGi(steps=1), config=CFG, prompt_ids=["a", "b", "c"])
    alone = generate(dlm, PROMPTS[2:], reward=rm, guidance=EntRGi(steps=1), config=CFG, prompt_ids=["c"])
    assert {k: v[2] for k, v in batched.compute.items()} == {k: v[0] for k, v in alone.compute.items()}
    assert batched.records()[2]["compute"] == alone.records()[0]["compute"]


def test_prefix_cache_scores_and_gradients_equal_the_full_forward(tiny_rm_path):
    cached = HFRewardModel(str(tiny_rm_path), prefix_cache=True)
    full = HFRewardModel(str(tiny_rm_path), prefix_cache=False)
    assert HFRewardModel(str(tiny_rm_path)).uses_prefix_cache            # auto: the Qwen3 backbone is causal
    prompts = ["write a review of the hotel", "write a very long review of this phone please", "x"]
    gen = torch.Generator().manual_seed(0)
    embeds = torch.randn(3, 7, cached.embedding_table.shape[1], generator=gen)
    keep = torch.arange(7)[None] < torch.tensor([[7], [3], [0]])         # full, partial and empty responses
    out = []
    for rm in (cached, full):
        e = embeds.clone().requires_grad_(True)
        reward = rm.score_embeds(rm.prepare(prompts), e, keep)
        out.append((reward, torch.autograd.grad(reward.sum(), e)[0]))
    torch.testing.assert_close(out[0][0], out[1][0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out[0][1], out[1][1], atol=1e-5, rtol=1e-5)
    texts = ["the hotel was great .", "bad", ""]
    torch.testing.assert_close(cached.score_text(prompts, texts), full.score_text(prompts, texts), atol=1e-5, rtol=1e-5)


def test_the_cache_is_off_for_a_bidirectional_reward_model():
    from transformers import BertConfig, BertForSequenceClassification

    from entrgi_core.tinyworld.tokenizers import build_rm_tokenizer
    tok = build_rm_tokenizer()
    bert = BertForSequenceClassification(BertConfig(vocab_size=len(tok), hidden_size=16, num_hidden_layers=1,
                                                    num_attention_heads=2, intermediate_size=16, num_labels=1))
    rm = HFRewardModel.from_model(bert, tok)
    assert not rm.uses_prefix_cache and "kv" not in rm.prepare(["x"]).data


def test_no_gradient_reaches_reward_model_parameters(dlm, rm):
    generate(dlm, PROMPTS[:2], reward=rm, guidance=Expectation(steps=2), config=CFG)
    params = list(rm.parameters())
    assert params and all(not p.requires_grad and p.grad is None for p in params)


def test_autocast_option(tiny_rm_path):
    fp32 = HFRewardModel(str(tiny_rm_path))
    bf16 = HFRewardModel(str(tiny_rm_path), autocast="bfloat16")
    prompts, texts = PROMPTS[:2], ["the hotel was great .", "it was bad"]
    a, b = fp32.score_text(prompts, texts), bf16.score_text(prompts, texts)
    assert b.dtype == torch.float32 and not torch.equal(a, b)
    torch.testing.assert_close(a, b, atol=0.1, rtol=0.1)
    with pytest.raises(ValueError, match="unknown dtype"):
        HFRewardModel(str(tiny_rm_path), autocast="bf17")


@pytest.mark.parametrize("kwargs,guided", [
    ({"every": 3}, [0, 3, 6]),
    ({"start": 0.5}, [4, 5, 6, 7]),
    ({"stop": 0.25}, [0, 1]),
    ({"min_entropy": 1.0}, []),                       # the model is never that uncertain
    ({"min_entropy": 0.1}, list(range(8))),
])
def test_guided_step_schedules(dlm, rm, kwargs, guided):
    cfg = DenoiseConfig(steps=8, max_new_tokens=6, num_samples=2)
    res = generate(dlm, PROMPTS[:2], reward=rm, guidance=EntRGi(steps=1, **kwargs), config=cfg)
    assert res.guided_steps == guided
    if not guided:                                    # every step excluded: exactly the unguided samples
        assert torch.equal(res.tokens, generate(dlm, PROMPTS[:2], reward=rm, config=cfg).tokens)


def test_the_strategy_alone_says_which_steps_it_guides(dlm, rm):
    tokens = torch.full((2, 4), dlm.mask_id)
    rows, cols = (tokens == dlm.mask_id).nonzero(as_tuple=True)
    phi = torch.randn(rows.numel(), dlm.vocab_size)
    g = EntRGi(every=2)
    assert [g.guides(make_step(dlm, rm, tokens, rows, cols, index=i), phi) for i in range(4)] == [True, False] * 2
    none = rows[:0]
    assert not g.guides(make_step(dlm, rm, tokens, none, none, index=0), phi[:0])     # no masked position
    assert not EntRGi(steps=0).guides(make_step(dlm, rm, tokens, rows, cols), phi)


@pytest.mark.parametrize("kwargs,message", [({"every": 0}, "every must be an integer >= 1"),
                                            ({"min_entropy": 1.5}, "min_entropy must lie in")])
def test_bad_schedules(kwargs, message):
    with pytest.raises(ValueError, match=message):
        EntRGi(**kwargs)
    assert not hasattr(NoGuidance(), "every")


# ----------------------------------------------------------------------------- diagnose and compare

def test_diagnose_on_a_linear_reward_has_the_known_answer(dlm):
    """For a reward linear in the embeddings and a position over ordinary tokens (no stop or
    special token, which would cut or drop the response), E_q[R(E[x])] = R(q @ E): the soft
    relaxation is exact (gap 0) and every gate's gradient is the gradient of the expected reward
    (cosine 1, computed exactly by enumerating the vocabulary)."""
    from entrgi_core.tools.diagnose import probe, summarize_bins
    from rewards import CallableReward

    table = dlm.model.get_input_embeddings().weight.detach()
    w = torch.randn(table.shape[1], generator=torch.Generator().manual_seed(0))
    linear = CallableReward(lambda e, keep: ((e @ w) * keep).sum(1), table, dlm.tokenizer)
    canvas = torch.tensor(dlm.tokenizer("the hotel was very great", add_special_tokens=False)["input_ids"])
    special = torch.tensor(dlm.tokenizer.all_special_ids)
    points = []
    for seed in range(4):
        phi = 3 * torch.randn(dlm.vocab_size, generator=torch.Generator().manual_seed(seed))
        phi[special] = float("-inf")
        step = make_step(dlm, linear, canvas[None].clone(), torch.tensor([0]), torch.tensor([2]))
        p = probe(step, PROMPTS[0], canvas, 2, phi, tau=0.7, samples=dlm.vocab_size, draws=2,
                  gen=torch.Generator().manual_seed(seed))
        assert abs(p["gap"]) < 1e-4
        for gate in ("soft", "ste", "entropy"):
            assert p[f"cos_{gate}"] == pytest.approx(1.0, abs=1e-4)
        points.append(p)
    assert sum(r["positions"] for r in summarize_bins(points)) == 4


def test_diagnose_records_states_and_bins_positions(dlm, rm):
    from entrgi_core.tools.diagnose import diagnose
    cfg = DenoiseConfig(steps=8, max_new_tokens=6, num_samples=1)
    points = diagnose(dlm, rm, PROMPTS[:2], cfg, positions=2, samples=64, draws=2)   # V > 64: sampled estimate
    assert len(points) == 3 * 2 * 2 and {p["step"] for p in points} == {2, 4, 6}
    assert all(0 <= p["entropy"] <= 1 for p in points)
    assert all(-1 <= p["cos_soft"] <= 1 for p in points if p["cos_soft"] is not None)
    assert any(abs(p["gap"]) > 1e-4 for p in points)    # the relaxation is not exact for a real RM


@pytest.mark.slow
def test_compare_writes_the_frontier(tmp_path, tiny_dlm_path, tiny_rm_path):
    import json as _json

    from entrgi_core.cli import main
    out = tmp_path / "cmp"
    main(["compare", "--seeds", "0", "1", "--budgets", "2", "4", "--guided-k", "2", "--guided-m", "1", "--smc-k", "2",
          "--prompts", "2", "--out", str(out), "--dlm.init_args.path", str(tiny_dlm_path),
          "--reward.init_args.path", str(tiny_rm_path), "--sampling.steps", "4", "--sampling.max_new_tokens", "6"])
    data = _json.loads((out / "frontier.json").read_text())
    labels = [r["label"] for r in data["rows"]]
    assert labels[:2] == ["BoN K=2", "BoN K=4"] and "EntRGi K=2 M=1" in labels and "APS K=2 M=1" in labels
    assert {"SMC none K=2", "SMC Expectation K=2", "SMC APS K=2", "SMC EntRGi K=2"} <= set(labels)
    assert len(data["runs"]) == 2 * len(labels) and all(r["seeds"] == 2 for r in data["rows"])
    bon2, bon4 = data["rows"][0], data["rows"][1]
    assert bon4["forward_equivalents"] == pytest.approx(2 * bon2["forward_equivalents"], rel=0.05)
    assert {"j:oracle", "j:valid"} <= set(bon2)            # tiny-world prompts: the oracle and validity judge
    assert (out / "frontier.png").stat().st_size > 0 and "BoN K=4" in (out / "frontier.txt").read_text()


def test_compare_and_diagnose_refuse_bad_input(capsys):
    from entrgi_core.cli import main
    for argv, message in ((["compare", "--budgets", "0"], "--budgets must be >= 1"),
                          (["compare", "--prompts", "0"], "--prompts must be >= 1"),
                          (["compare", "--smc-k", "0"], "--smc-k must be >= 1"),
                          (["compare", "--only", "Bestof"], "--only Bestof keeps no curve; the curves are: "),
                          (["diagnose", "--samples", "0"], "--samples must be >= 1")):
        with pytest.raises(SystemExit) as done:
            main(argv)
        assert done.value.code == 2 and message in capsys.readouterr().err


def test_the_imperfect_reward_model_is_imperfect():
    from entrgi_core import tinyworld
    from entrgi_core.tinyworld.train import IMPERFECT, rm_pearson
    r = rm_pearson(tinyworld.rm_imperfect_path(), seed=0)
    lo, hi = IMPERFECT["pearson"]
    assert lo <= r <= hi, r
    assert rm_pearson(tinyworld.rm_path(), seed=0) > 0.99


def test_matched_compute_reads_each_curve_at_or_below_each_budget():
    from entrgi_core.tools.compare import matched
    rows = [dict(family="Best-of-N", label="BoN K=4", k=4, top1=0.5, forward_equivalents=129),
            dict(family="Best-of-N", label="BoN K=8", k=8, top1=0.7, forward_equivalents=258),
            dict(family="SMC", label="SMC K=2", k=2, top1=0.8, forward_equivalents=120),
            dict(family="SMC", label="SMC K=4", k=4, top1=0.6, forward_equivalents=240),
            dict(family="SMC", label="SMC K=8", k=8, top1=0.99, forward_equivalents=480)]
    lines = matched(rows).splitlines()
    assert lines[3].split() == ["129", "(BoN", "K=4)", "+0.500", "[K=4]", "+0.800", "[K=2]"]
    assert lines[4].split() == ["258", "(BoN", "K=8)", "+0.700", "[K=8]", "+0.800", "[K=2]"]   # K=8 costs too much
    assert matched(rows[:2]) == ""
