"""Parallel commits, the block KV cache and tokens per forward (issue 16): the rules by hand, the
at-least-one rule, blocks, steps as a maximum, batch invariance, switched-off guidance under each
schedule, the cache's exactness when refreshed every step, and clear refusals."""
import json

import pytest
import torch

from entrgi_core import DenoiseConfig, DreamLM, InputError, LLaDALM, generate
from entrgi_core.schedules import (EntropyBoundSchedule, FactorSchedule, ThresholdSchedule, make_schedule,
                                   parallel_commit)
from guidance import SMC, EntRGi, Expectation
from tests.conftest import PROMPTS, in_process_cli, read_jsonl

PARALLEL = ["threshold", "factor", "entropy_bound"]
RAGGED = ["write a review of the hotel", "write a very long review of this phone please", "write a review of the zoo"]


def commit(schedule, stat, *, eligible=None, last=False, sampled=None, stop=99, deprioritize_eos=True):
    """One row: ``stat`` at its masked positions 0..n-1 -> the committed positions."""
    n = len(stat)
    rows, cols = torch.zeros(n, dtype=torch.long), torch.arange(n)
    eligible = torch.ones(1, n, dtype=torch.bool) if eligible is None else torch.tensor([eligible])
    x0 = torch.tensor(sampled if sampled is not None else [1] * n)
    out = parallel_commit(schedule, stat=torch.tensor(stat), x0=x0, rows=rows, cols=cols, eligible=eligible,
                          last=torch.tensor([last]), stop_ids=torch.tensor([stop]), deprioritize_eos=deprioritize_eos)
    return out[0].nonzero().squeeze(1).tolist()


def test_the_rules_by_hand():
    assert commit(ThresholdSchedule(0.9), [0.95, 0.5, 0.92, 0.99]) == [0, 2, 3]
    assert commit(ThresholdSchedule(0.9), [0.3, 0.6, 0.2]) == [1]                      # at least one: the most confident
    # factor 1: sorted 0.99, 0.8, 0.7, 0.2: 2 x 0.01 < 1, 3 x 0.2 < 1, 4 x 0.3 >= 1 -> two
    assert commit(FactorSchedule(1.0), [0.2, 0.8, 0.99, 0.7]) == [1, 2]
    assert commit(FactorSchedule(0.5), [0.2, 0.8, 0.99, 0.7]) == [2]                   # 3 x 0.2 >= 0.5
    # entropy bound 0.05: sorted 0.01, 0.02, 0.05, 0.3; sum - max = 0, 0.01, 0.03, 0.08 -> three
    assert commit(EntropyBoundSchedule(0.05), [0.01, 0.05, 0.3, 0.02]) == [0, 1, 3]
    assert commit(EntropyBoundSchedule(0.0), [0.4, 0.7]) == [0]                         # the lowest entropy, always


def test_blocks_the_last_step_and_eos():
    assert commit(ThresholdSchedule(0.9), [0.99, 0.95, 0.99, 0.2], eligible=[False, True, True, True]) == [1, 2]
    assert commit(ThresholdSchedule(0.9), [0.3, 0.6, 0.2], last=True) == [0, 1, 2]     # the block's last step: all
    # a confident EOS (id 99) ranks after a position that fails: it waits; without the rule it commits
    assert commit(ThresholdSchedule(0.9), [0.99, 0.5, 0.97], sampled=[1, 1, 99]) == [0]
    assert commit(ThresholdSchedule(0.9), [0.99, 0.5, 0.97], sampled=[1, 1, 99], deprioritize_eos=False) == [0, 2]
    assert commit(ThresholdSchedule(0.9), [0.99, 0.93, 0.97], sampled=[1, 1, 99]) == [0, 1, 2]   # the rest passed


def test_bad_parameters_are_one_message_before_any_compute(rm):
    with pytest.raises(InputError) as bad:
        DenoiseConfig(schedule="threshold", threshold=0.0, factor=-1.0, entropy_bound=-0.1)
    message = str(bad.value)
    assert all(s in message for s in ("threshold must lie in (0, 1]", "factor must be > 0", "entropy_bound must be >= 0"))
    for alg in ("random", "origin", "topk_margin", "low_confidence"):
        with pytest.raises(InputError, match="ranks positions by its own statistic"):
            DenoiseConfig(schedule="entropy_bound", alg=alg)
    with pytest.raises(InputError, match="alg_temp=0"):
        DenoiseConfig(schedule="threshold", alg_temp=0.5)
    with pytest.raises(InputError, match="set block_length"):
        DenoiseConfig(steps=2, max_new_tokens=4, cache="dual")
    assert make_schedule("threshold", DenoiseConfig(threshold=0.8)).threshold == 0.8


@pytest.mark.parametrize("schedule", PARALLEL)
def test_parallel_schedules_end_early_and_count_tokens_per_forward(world, schedule):
    dlm, rm = world
    cfg = DenoiseConfig(steps=32, max_new_tokens=32, num_samples=2, schedule=schedule)
    res = generate(dlm, PROMPTS, reward=rm, config=cfg)
    assert (res.tokens != dlm.mask_id).all()
    assert all(1 <= s < 32 for s in res.denoising_steps)                  # the tiny dLLM is confident: fewer steps
    for b in range(len(PROMPTS)):
        forwards = res.compute["dlm_forwards"][b]
        assert res.tokens_per_forward[b] == pytest.approx(2 * 32 / forwards) and forwards <= 2 * res.denoising_steps[b]
    rec = res.records()[0]
    assert rec["tokens_per_forward"] > 1 and rec["denoising_steps"] == res.denoising_steps[0]
    one = generate(dlm, PROMPTS, reward=rm, config=DenoiseConfig(steps=32, max_new_tokens=32, num_samples=2))
    assert one.tokens_per_forward == [1.0] * 3 and sum(res.compute["flops"]) < sum(one.compute["flops"])


def test_steps_are_a_maximum_and_blocks_fill_in_order(dlm):
    from entrgi_core import MaskedLM

    class Recording(MaskedLM):
        seen = []

        def forward_logits(self, input_ids, *a, **k):
            type(self).seen.append(input_ids[:, -8:].clone())
            return super().forward_logits(input_ids, *a, **k)

    model = Recording.from_model(dlm.model, dlm.tokenizer)      # random weights: nothing passes 0.9
    cfg = DenoiseConfig(steps=4, max_new_tokens=8, num_samples=1, block_length=4, schedule="threshold")
    res = generate(model, PROMPTS[:1], config=cfg)
    assert (res.tokens != dlm.mask_id).all() and res.denoising_steps == [4]
    first, second, third = Recording.seen[:3]
    assert (first == dlm.mask_id).sum() == 8 and (second[0, :4] != dlm.mask_id).sum() == 1   # one, then the rest
    assert (third[0, :4] != dlm.mask_id).all() and (third[0, 4:] == dlm.mask_id).all()       # block 2 starts full


@pytest.mark.parametrize("schedule", PARALLEL)
def test_a_prompt_is_the_same_alone_or_in_a_ragged_batch(world, schedule):
    dlm, rm = world
    cfg = DenoiseConfig(steps=16, max_new_tokens=16, num_samples=2, schedule=schedule, block_length=8, seed=5)
    for guidance in (EntRGi(steps=1), SMC(Expectation(steps=1), beta=0.1)):
        batched = generate(dlm, RAGGED, reward=rm, guidance=guidance, config=cfg, prompt_ids=["a", "b", "c"])
        alone = generate(dlm, RAGGED[1:2], reward=rm, guidance=guidance, config=cfg, prompt_ids=["b"])
        assert torch.equal(alone.tokens[0], batched.tokens[1])
        assert {k: v[0] for k, v in alone.compute.items()} == {k: v[1] for k, v in batched.compute.items()}
        assert alone.denoising_steps[0] == batched.denoising_steps[1]


@pytest.mark.parametrize("schedule", PARALLEL)
def test_switched_off_guidance_is_unguided_under_each_schedule(world, schedule):
    dlm, rm = world
    cfg = DenoiseConfig(steps=16, max_new_tokens=16, num_samples=2, schedule=schedule)
    base = generate(dlm, PROMPTS, reward=rm, config=cfg)
    for off in (EntRGi(steps=0), Expectation(lr=0.0), SMC(beta=float("inf"))):
        assert torch.equal(generate(dlm, PROMPTS, reward=rm, guidance=off, config=cfg).tokens, base.tokens)


def test_guidance_reads_the_guided_logits_for_the_commit(world):
    """Under a parallel schedule the statistic is read from the logits the tokens are drawn from."""
    dlm, rm = world
    cfg = DenoiseConfig(steps=32, max_new_tokens=32, num_samples=2, schedule="entropy_bound")
    plain = generate(dlm, PROMPTS, reward=rm, config=cfg)
    guided = generate(dlm, PROMPTS, reward=rm, guidance=Expectation(steps=3, lr=2.0), config=cfg)
    assert guided.denoising_steps != plain.denoising_steps and float(guided.avg_reward.mean()) > float(plain.avg_reward.mean())


# ----------------------------------------------------------------------------- SMC under parallel commits

def test_smc_weighs_every_token_a_step_commits():
    from entrgi_core.contract import GuidanceStep, Sampling, StepUpdate

    smc = SMC(beta=float("inf"))
    state = smc.begin(1, 2, "cpu")
    p = torch.tensor([0.5, 0.25, 0.25]).log().expand(4, 3)
    q = torch.tensor([0.25, 0.5, 0.25]).log().expand(4, 3).clone()
    rows, cols = torch.tensor([0, 0, 1, 1]), torch.tensor([0, 1, 0, 1])
    step = GuidanceStep(index=0, total=4, side=None, tokens=torch.full((2, 2), 9), rows=rows, cols=cols,
                        keys=torch.tensor([1, 2]), samples=2, sampling=Sampling(1.0))
    update = StepUpdate(p, q, torch.tensor([0, 1, 2, 0]), torch.tensor([True, True, False, False]), step.tokens)
    smc.observe(state, step, update)               # row 0 commits two tokens at once: 0.5/0.25 and 0.25/0.5
    torch.testing.assert_close(state.log_weight, torch.tensor([0.0, 0.0], dtype=torch.float64), atol=1e-12, rtol=0)
    update = StepUpdate(p, q, torch.tensor([0, 0, 0, 0]), torch.tensor([True, True, True, False]), step.tokens)
    smc.observe(state, step, update)
    torch.testing.assert_close(state.log_weight, torch.tensor([2 * 0.6931471805599453, 0.6931471805599453],
                                                              dtype=torch.float64))


def test_smc_can_resample_only_at_block_boundaries(world):
    dlm, rm = world
    cfg = DenoiseConfig(steps=16, max_new_tokens=16, num_samples=4, schedule="threshold", block_length=8, seed=1)
    every_step = generate(dlm, PROMPTS[:2], reward=rm, guidance=SMC(beta=0.3), config=cfg, diagnose=True)
    blocks = generate(dlm, PROMPTS[:2], reward=rm, guidance=SMC(beta=0.3, resample_at="block", ess_threshold=1.0),
                      config=cfg, diagnose=True)
    for b in range(2):                             # one reading each: when all four have block 1 full
        assert blocks.compute["rm_forwards"][b] == 4 < every_step.compute["rm_forwards"][b]
        assert len(blocks.particles["resampled_at"][b]) == 1
    with pytest.raises(InputError, match="resample_at must be one of"):
        SMC(resample_at="end")


# ----------------------------------------------------------------------------- the block KV cache

@pytest.mark.parametrize("mode", ["prefix", "dual"])
@pytest.mark.parametrize("schedule", ["dream", "threshold"])
def test_a_cache_refreshed_every_step_is_exactly_the_uncached_sampler(world, mode, schedule):
    dlm, rm = world
    over = dict(steps=16, max_new_tokens=16, num_samples=2, block_length=4, schedule=schedule)
    for guidance in (None, EntRGi(steps=1)):
        plain = generate(dlm, PROMPTS, reward=rm, guidance=guidance, config=DenoiseConfig(**over))
        cached = generate(dlm, PROMPTS, reward=rm, guidance=guidance,
                          config=DenoiseConfig(**over, cache=mode, cache_refresh=1))
        assert torch.equal(cached.tokens, plain.tokens) and cached.compute == plain.compute
        approx = generate(dlm, PROMPTS, reward=rm, guidance=guidance, config=DenoiseConfig(**over, cache=mode))
        assert sum(approx.compute["dlm_tokens"]) < sum(plain.compute["dlm_tokens"])
        assert (approx.tokens != dlm.mask_id).all()


def cache_agrees_with_the_full_forward(model, mode, canvas_len=20, width=8, block_len=4, vocab=50):
    """Right after a refresh, a cached run of block 1 on the same canvas gives the full forward's logits."""
    from entrgi_core.kv_cache import BlockCache

    torch.manual_seed(0)
    ids = torch.randint(5, vocab, (3, canvas_len))
    attn = torch.ones_like(ids, dtype=torch.bool)
    attn[1, :3] = False
    pos = (attn.long().cumsum(1) - 1).clamp(min=0)
    cache = BlockCache(mode, 0, 3, "cpu")
    block = torch.ones(3, dtype=torch.long)
    full = cache.refresh(model, ids, attn, pos, width, torch.arange(3), block).clone()
    cache.logits.zero_()                                               # so that only the run writes them
    tokens = cache.run(model, ids, attn, pos, width, torch.tensor([0, 2]), 1, block_len)
    lo, hi = block_len, (2 * block_len if mode == "dual" else canvas_len - width)
    torch.testing.assert_close(cache.logits[[0, 2], lo:hi], full[[0, 2], lo:hi], atol=1e-5, rtol=1e-5)
    assert (cache.logits[1] == 0).all() and (cache.logits[[0, 2], :lo] == 0).all()
    return tokens


@pytest.mark.parametrize("mode", ["prefix", "dual"])
def test_the_cache_mechanics_on_bert_and_a_dream_like_model(dlm, mode):
    tokens = cache_agrees_with_the_full_forward(dlm, mode, vocab=dlm.vocab_size)
    assert tokens.tolist() == [4 if mode == "dual" else 8] * 2           # the columns run
    dream = DreamLM.from_model(*dream_like_qwen2())
    cache_agrees_with_the_full_forward(dream, mode)                    # Dream: logits shifted by one


def dream_like_qwen2():
    """A tiny Qwen2 read as Dream reads its model: a (B, 1, Q, S) boolean mask (bidirectional),
    explicit positions, an appending transformers cache; its config says model_type "Dream"."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from entrgi_core.tinyworld.tokenizers import build_dlm_tokenizer

    tok = build_dlm_tokenizer()
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(Qwen2Config(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=128))
    model.config.model_type = "Dream"
    return model.eval(), tok


def test_a_dream_like_model_runs_cached_and_refreshed_every_step_is_exact(world):
    _, rm = world
    dream = DreamLM.from_model(*dream_like_qwen2())
    over = dict(steps=8, max_new_tokens=8, num_samples=2, block_length=4, schedule="threshold", threshold=0.2)
    plain = generate(dream, PROMPTS[:2], reward=rm, config=DenoiseConfig(**over))
    for mode in ("prefix", "dual"):
        exact = generate(dream, PROMPTS[:2], reward=rm, config=DenoiseConfig(**over, cache=mode, cache_refresh=1))
        assert torch.equal(exact.tokens, plain.tokens)


def test_models_that_cannot_cache_refuse_before_compute(dlm, rm):
    llada = LLaDALM.from_model(dlm.model, dlm.tokenizer)
    cfg = DenoiseConfig(steps=4, max_new_tokens=8, block_length=4, cache="prefix")
    with pytest.raises(InputError, match="LLaDA's own modelling code asserts"):
        generate(llada, PROMPTS[:1], config=cfg)
    with pytest.raises(InputError, match="takes no key/value cache"):
        generate(exploding_model_without_cache(), PROMPTS[:1], config=cfg)


def exploding_model_without_cache():
    from transformers import DistilBertConfig, DistilBertForMaskedLM

    from entrgi_core import MaskedLM
    from entrgi_core.tinyworld.tokenizers import build_dlm_tokenizer

    tok = build_dlm_tokenizer()
    bert = DistilBertForMaskedLM(DistilBertConfig(vocab_size=len(tok), dim=16, n_layers=1, n_heads=2, hidden_dim=16))
    return MaskedLM.from_model(bert, tok)


# ----------------------------------------------------------------------------- records and the CLI

@pytest.mark.slow
def test_the_cli_runs_threshold_decoding_and_records_tokens_per_forward(tmp_path, monkeypatch):
    from tests.conftest import ROOT

    monkeypatch.chdir(ROOT)
    out = tmp_path / "fast"
    code, err = in_process_cli("predict", "--config", "configs/tiny.yaml", "--sampling.schedule", "threshold",
                               "--sampling.threshold", "0.9", "--data.limit", "4", "--output_dir", str(out))
    assert code == 0, err
    recs = read_jsonl(out / "predictions.jsonl")
    assert len(recs) == 4 and all(r["tokens_per_forward"] > 1 and r["denoising_steps"] < 32 for r in recs)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["mean_tokens_per_forward"] == pytest.approx(sum(r["tokens_per_forward"] for r in recs) / 4)
