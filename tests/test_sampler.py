"""The sampler (entrgi_core.sampler, plan, result): exactness invariants (DESIGN.md §4), the
compute account, diagnostics, and bad input refused before any model compute."""
import pytest
import torch

from entrgi_core import DenoiseConfig, InputError, MaskedLM, NonFiniteLogitsError, generate
from entrgi_core.models import DiffusionLM
from guidance import EntRGi
from rewards import HFRewardModel
from tests.helpers import (
    PROMPTS,
    exploding_model,
    small_config,
)

SMALL = small_config()


CFG = DenoiseConfig(steps=4, max_new_tokens=6, num_samples=2)


class CountingRM(HFRewardModel):
    calls = 0

    def score_embeds(self, ctx, embeds, keep):
        type(self).calls += 1
        return super().score_embeds(ctx, embeds, keep)


def test_diagnostics_and_result_fields(dlm, rm):
    res = generate(dlm, PROMPTS[:2], reward=rm, guidance=EntRGi(steps=1), config=SMALL, diagnose=True)
    assert res.tokens.shape == (2, 2, 8) and len(res.texts) == 2 and len(res.texts[0]) == 2
    assert res.rewards.shape == (2, 2)
    torch.testing.assert_close(res.best_reward, res.rewards.max(1).values)
    torch.testing.assert_close(res.avg_reward, res.rewards.mean(1))
    assert res.guided_steps == list(range(SMALL.steps))
    assert res.weight.shape == (2, SMALL.steps) and ((res.weight >= 0) & (res.weight <= 1)).all()
    assert res.reward_before.shape == res.reward_after.shape == (2, SMALL.steps)
    assert (res.tokens != dlm.mask_id).all(), "every position is committed at the end"
    recs = res.records(method="entrgi", seed=3)
    assert recs[0]["best_response"] == res.texts[0][recs[0]["best_index"]]


def test_seed_changes_samples(dlm):
    a = generate(dlm, PROMPTS, config=DenoiseConfig(steps=4, max_new_tokens=8, num_samples=2, seed=0))
    b = generate(dlm, PROMPTS, config=DenoiseConfig(steps=4, max_new_tokens=8, num_samples=2, seed=1))
    assert not torch.equal(a.tokens, b.tokens)


@pytest.mark.parametrize("kwargs,message", [
    ({"steps": 0}, "steps must be an integer >= 1"),
    ({"max_new_tokens": 0}, "max_new_tokens must be an integer >= 1"),
    ({"num_samples": 0}, "num_samples must be an integer >= 1"),
    ({"temperature": -0.1}, "temperature must be >= 0"),
    ({"schedule": "threshold"}, "schedule must be None (the model's own) or a CommitSchedule object"),
    ({"top_p": 0.0}, "top_p must lie in (0, 1]"),
    ({"top_p": 1.5}, "top_p must lie in (0, 1]"),
    ({"alg": "confident"}, "alg must be one of"),
    ({"max_new_tokens": 10, "block_length": 4}, "does not divide max_new_tokens"),
])
def test_bad_config(kwargs, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[").replace("]", r"\]")):
        DenoiseConfig(**kwargs)


def test_bad_prompts_fail_before_model_compute(rm):
    class Exploding(DiffusionLM):
        def forward_logits(self, *a):
            raise AssertionError("model ran")
    from transformers import BertConfig
    from transformers import BertForMaskedLM as B

    from entrgi_core.tinyworld.tokenizers import build_dlm_tokenizer
    tok = build_dlm_tokenizer()
    model = Exploding.from_model(B(BertConfig(vocab_size=len(tok), hidden_size=8, num_hidden_layers=1,
                                              num_attention_heads=1, intermediate_size=8)), tok)
    for prompts, msg in (([], "empty"), ([""], "prompt 0 is empty"), (["ok", "  "], "prompt 1 is empty"),
                         ("a string", "must be a list")):
        with pytest.raises(ValueError, match=msg):
            generate(model, prompts, reward=rm, guidance=EntRGi(), config=SMALL)
    with pytest.raises(ValueError, match="needs a reward model"):
        generate(model, ["x"], guidance=EntRGi(), config=SMALL)


def test_non_finite_logits_name_the_step(dlm, rm):
    class NaNAfter(MaskedLM):
        calls = 0

        def forward_logits(self, *a):
            out = super().forward_logits(*a)
            type(self).calls += 1
            return out * float("nan") if type(self).calls > 2 else out
    bad = NaNAfter.from_model(dlm.model, dlm.tokenizer)
    with pytest.raises(NonFiniteLogitsError, match="the model at denoising step 2: non-finite logits"):
        generate(bad, PROMPTS[:1], config=SMALL)


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


def test_costly_diagnostics_are_off_by_default(dlm, tiny_rm_path):
    rm = CountingRM.from_pretrained(str(tiny_rm_path))
    cfg = DenoiseConfig(steps=4, max_new_tokens=6, num_samples=2)
    for diagnose, per_step in ((False, 2), (True, 3)):
        CountingRM.calls = 0
        res = generate(dlm, PROMPTS[:2], reward=rm, guidance=EntRGi(steps=2), config=cfg, diagnose=diagnose)
        assert CountingRM.calls == cfg.steps * per_step + 1          # + the final text scoring
        assert (res.reward_after is not None) == diagnose and res.weight is not None


def test_a_records_diagnostics_are_its_own_prompts(dlm, rm):
    cfg = DenoiseConfig(steps=4, max_new_tokens=6, num_samples=2)
    batched = generate(dlm, PROMPTS, reward=rm, guidance=EntRGi(steps=1), config=cfg, prompt_ids=["a", "b", "c"])
    alone = generate(dlm, PROMPTS[1:2], reward=rm, guidance=EntRGi(steps=1), config=cfg, prompt_ids=["b"])
    torch.testing.assert_close(batched.weight[1], alone.weight[0])
    torch.testing.assert_close(batched.reward_before[1], alone.reward_before[0], atol=1e-5, rtol=1e-5)
    assert not torch.allclose(batched.reward_before[0], batched.reward_before[1])   # not a batch mean
    rec = batched.records()[1]
    assert list(rec["weight_by_step"]) == [0, 1, 2, 3] and "reward_after_by_step" not in rec


def test_prompts_over_the_position_limit_are_refused_before_model_compute(rm):
    long = " ".join(["the hotel was great"] * 750)                   # 3,000 words
    with pytest.raises(ValueError, match=r"diffusion LM allows 64 positions.*ids 'long'.*nothing was run"):
        generate(exploding_model(), ["fine", long], reward=rm, guidance=EntRGi(), prompt_ids=["ok", "long"],
                 config=DenoiseConfig(steps=2, max_new_tokens=8))
    with pytest.raises(ValueError, match=r"reward model allows 256 positions.*ids 'ok'"):
        generate(exploding_model(), ["fine"], reward=rm, guidance=EntRGi(), prompt_ids=["ok"],
                 config=DenoiseConfig(steps=2, max_new_tokens=130))


def test_a_non_string_prompt_is_named_as_such(rm):
    with pytest.raises(ValueError, match=r"prompt 1 is not a string \(int: 42\)"):
        generate(exploding_model(), ["ok", 42], reward=rm, config=DenoiseConfig(steps=2, max_new_tokens=4))


@pytest.mark.parametrize("broad", [True, False], ids=["with-broad-rows", "all-rows-narrow"])
@pytest.mark.parametrize("top_p,top_k", [(0.95, None), (0.9, 50), (1.0, 7), (0.5, None), (0.999, None)])
def test_top_p_on_the_largest_probabilities_draws_what_a_full_sort_draws(top_p, top_k, broad, monkeypatch):
    """At a real vocabulary the filters look at each row's largest probabilities first; every draw,
    confidence, entropy and log-probability (of drawn tokens and of tokens the filters drop) is bit
    for bit the full sort's, ties and broad rows (which fall back to the full sort) included, and
    when no row is broad (the draws then run over the candidate columns only)."""
    import entrgi_core.draws as draws

    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(64, 5000, generator=gen) * torch.tensor([8.0, 10.0, 12.0, 20.0]).repeat(16)[:, None]
    if broad:
        logits *= torch.tensor([0.0375, 0.1, 0.25, 0.4]).repeat(16)[:, None]
        logits[:4] = 0.0                                              # ties everywhere
        logits[4:8, :3000] = 2.0                                      # a plateau wider than the candidates
    u = torch.rand(64, generator=gen)
    opts = dict(temperature=0.7, top_p=top_p, top_k=top_k)
    unlikely = logits.argmin(-1)                                      # dropped by every filter but top_p = 1

    def everything():
        tokens, conf = draws.sample_tokens(logits, u, **opts, confidence="maskgit_plus")
        return (tokens, conf, draws.neg_entropy(logits, **opts), draws.token_log_probs(logits, tokens, **opts),
                draws.token_log_probs(logits, unlikely, **opts))

    if not broad:                                                     # no row falls back: the narrow path runs
        probs = torch.softmax(logits / 0.7, -1)
        assert draws._sorted_descending(probs, top_p, top_k)[0].shape[1] == draws.CANDIDATES
    partial = everything()
    monkeypatch.setattr(draws, "CANDIDATES", 10**9)                   # the full sort everywhere
    full = everything()
    assert all(torch.equal(a, b) for a, b in zip(partial, full))


def test_the_finite_check_tells_overflowing_sums_from_non_finite_logits():
    """The logits check sums first: large finite logits whose sum overflows pass, and a single
    NaN, +inf or -inf among them is still found."""
    from entrgi_core.errors import require_finite

    big = torch.full((4, 1000), 3e38)
    require_finite(big, "huge but finite")                            # the sum is inf; every term is finite
    for bad in (float("nan"), float("inf"), float("-inf")):
        for base in (big, torch.zeros(4, 1000)):
            x = base.clone()
            x[2, 7] = bad
            with pytest.raises(NonFiniteLogitsError, match="at step 3: non-finite logits"):
                require_finite(x, "at step 3")


def test_a_baseline_gives_each_prompts_gain_over_best_of_n_under_the_reward_and_each_judge(dlm, rm):
    """baseline=True runs Best-of-N at the same K and seeds: its Top@1 is exactly an unguided
    generate's, the gains are this run's minus it (reward and each judge), its compute is apart."""
    from entrgi_core.errors import InputError
    from guidance import EntRGi
    from rewards import TextReward

    judge = TextReward(lambda p, r: [float(len(x.split())) for x in r], name="words")
    cfg = small_config(num_samples=3)
    guided = generate(dlm, PROMPTS, reward=rm, guidance=EntRGi(steps=1), config=cfg, judges=[judge], baseline=True)
    alone = generate(dlm, PROMPTS, reward=rm, guidance=EntRGi(steps=1), config=cfg, judges=[judge])
    bon = generate(dlm, PROMPTS, reward=rm, config=cfg, judges=[judge])
    assert torch.equal(guided.tokens, alone.tokens) and guided.compute == alone.compute    # the run is unchanged
    torch.testing.assert_close(guided.baseline["reward"], bon.best_reward)
    torch.testing.assert_close(guided.gains["reward"], guided.best_reward - bon.best_reward)
    words = lambda r: r.judge_scores["words"].gather(1, r.best_index[:, None])[:, 0]   # noqa: E731
    torch.testing.assert_close(guided.gains["words"], words(guided) - words(bon))
    rec = guided.records()[1]
    assert set(rec["gain_over_best_of_n"]) == {"reward", "words"}
    assert rec["best_of_n"]["forward_equivalents"] == pytest.approx(bon.compute["forward_equivalents"][1])
    assert "gain_over_best_of_n" not in alone.records()[0]
    from entrgi_core.writer import gain_summary
    summary = gain_summary(guided.records())
    assert summary["gain_over_best_of_n"]["reward"] == pytest.approx(float(guided.gains["reward"].mean()))
    assert gain_summary(alone.records()) == {}
    with pytest.raises(InputError, match="this run is unguided"):
        generate(dlm, PROMPTS, reward=rm, config=cfg, baseline=True)


@pytest.mark.parametrize("guided", [False, True], ids=["unguided", "entrgi"])
def test_per_prompt_seeds_give_each_prompt_what_it_gets_alone_with_its_seed(dlm, rm, guided):
    """generate(seeds=[...]) lets prompts with different seeds share one batch (a server's batching):
    each prompt's responses equal generate's for it alone with config.seed = its seed."""
    from dataclasses import replace

    from guidance import EntRGi
    strategy = (lambda: EntRGi(steps=1)) if guided else (lambda: None)
    cfg = small_config(num_samples=2)
    together = generate(dlm, PROMPTS, reward=rm, guidance=strategy(), config=cfg, prompt_ids=["a", "b", "c"],
                        seeds=[3, 5, 3])
    for b, (pid, seed) in enumerate(zip("abc", (3, 5, 3))):
        alone = generate(dlm, PROMPTS[b:b + 1], reward=rm, guidance=strategy(), config=replace(cfg, seed=seed),
                         prompt_ids=[pid])
        assert torch.equal(alone.tokens[0], together.tokens[b])
        torch.testing.assert_close(alone.rewards[0], together.rewards[b])
    same = generate(dlm, PROMPTS, reward=rm, guidance=strategy(), config=cfg, prompt_ids=["a", "b", "c"])
    assert torch.equal(same.tokens, generate(dlm, PROMPTS, reward=rm, guidance=strategy(), config=cfg,
                                             prompt_ids=["a", "b", "c"], seeds=[cfg.seed] * 3).tokens)


def test_bad_per_prompt_seeds(dlm):
    from entrgi_core.errors import InputError
    with pytest.raises(InputError, match="2 seeds for 3 prompts"):
        generate(dlm, PROMPTS, config=SMALL, seeds=[1, 2])
    with pytest.raises(InputError, match="generate: each of seeds must be an integer >= 0, got -1"):
        generate(dlm, PROMPTS, config=SMALL, seeds=[1, 2, -1])


def test_on_step_sees_each_steps_canvas_and_can_stop_the_generation(dlm, rm):
    seen = []

    def on_step(index, tokens):
        seen.append((index, tokens.clone()))

    res = generate(dlm, PROMPTS[:2], reward=rm, guidance=EntRGi(steps=1), config=SMALL, on_step=on_step)
    plain = generate(dlm, PROMPTS[:2], reward=rm, guidance=EntRGi(steps=1), config=SMALL)
    assert torch.equal(res.tokens, plain.tokens)                      # watching changes nothing
    assert [i for i, _ in seen] == list(range(SMALL.steps))
    assert all(t.shape == (2, SMALL.num_samples, SMALL.max_new_tokens) for _, t in seen)
    masked = [int((t == dlm.mask_id).sum()) for _, t in seen]
    assert masked == sorted(masked, reverse=True) and masked[0] > 0 and masked[-1] == 0
    assert torch.equal(seen[-1][1].cpu(), res.tokens)                # the last canvas is the result

    class Stop(Exception):
        pass

    def stop_after_one(index, tokens):
        if index == 1:
            raise Stop(index)

    with pytest.raises(Stop):
        generate(dlm, PROMPTS[:1], config=SMALL, on_step=stop_after_one)
    with pytest.raises(InputError, match="on_step must be callable"):
        generate(dlm, PROMPTS[:1], config=SMALL, on_step=3)
    with pytest.raises(InputError, match="on_step cannot be combined with baseline"):
        generate(dlm, PROMPTS[:1], reward=rm, guidance=EntRGi(steps=1), config=SMALL, on_step=on_step, baseline=True)


def test_generate_steps_gives_what_on_step_sees_and_then_generates_result(dlm, rm):
    from entrgi_core import generate_steps
    seen = []
    res = generate(dlm, PROMPTS[:2], reward=rm, guidance=EntRGi(steps=1), config=SMALL,
                   on_step=lambda i, t: seen.append((i, t.clone())))
    steps = generate_steps(dlm, PROMPTS[:2], reward=rm, guidance=EntRGi(steps=1), config=SMALL)
    with pytest.raises(RuntimeError, match="the generation has steps left"):
        steps.result
    got = [(index, tokens.clone()) for index, tokens in steps]
    out = steps.result
    assert [i for i, _ in got] == [i for i, _ in seen] and all(torch.equal(a, b) for (_, a), (_, b) in zip(got, seen))
    assert torch.equal(out.tokens, res.tokens) and torch.equal(out.rewards, res.rewards)
    with pytest.raises(InputError, match="top_p"):                    # checked at the call, before any compute
        generate_steps(dlm, PROMPTS[:1], config=DenoiseConfig(top_p=2.0))
