"""SMC (guidance.smc): weights, resampling and potentials by hand, invariants, text potentials,
adaptive tempering, blocks."""
import json
import math

import pytest
import torch

from entrgi_core import DenoiseConfig, InputError, generate, rng, tinyworld
from entrgi_core.contract import GuidanceStep, Sampling, StepUpdate
from entrgi_core.draws import sample_tokens, token_log_probs
from entrgi_core.schedules import Threshold
from entrgi_core.tinyworld import OracleJudge
from guidance import SMC, EntRGi, Expectation, NoGuidance, StraightThrough
from guidance.smc import systematic
from rewards import Sum, TextReward
from tests.helpers import PROMPTS, cli, exploding_model, read_jsonl, small_config, strip

SMALL = small_config()


CFG = DenoiseConfig(steps=6, max_new_tokens=8, num_samples=3, seed=5)


class FixedReward(SMC):
    """SMC whose intermediate reward is given (no reward model): isolates the weight arithmetic."""

    def __init__(self, rewards, **kw):
        super().__init__(**kw)
        self.rewards = list(rewards)

    def intermediate_reward(self, step, update, read):
        return torch.tensor(self.rewards.pop(0), dtype=torch.float64)


def hand_step(index, tokens, rows, cols):
    """A step of one prompt with K=3 rows and no reward model (the reward is given)."""
    return GuidanceStep(index=index, total=10, side=None, tokens=tokens, rows=rows, cols=cols,
                        keys=torch.tensor([11, 12, 13]), samples=3, sampling=Sampling(1.0, 1.0, None))


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
    cfg = DenoiseConfig(steps=16, max_new_tokens=16, num_samples=4, schedule=Threshold(0.9), block_length=8, seed=1)
    every_step = generate(dlm, PROMPTS[:2], reward=rm, guidance=SMC(beta=0.3), config=cfg, diagnose=True)
    blocks = generate(dlm, PROMPTS[:2], reward=rm, guidance=SMC(beta=0.3, resample_at="block", ess_threshold=1.0),
                      config=cfg, diagnose=True)
    for b in range(2):                             # one reading each: when all four have block 1 full
        assert blocks.compute["rm_forwards"][b] == 4 < every_step.compute["rm_forwards"][b]
        assert len(blocks.particles["resampled_at"][b]) == 1
    with pytest.raises(InputError, match="resample_at must be one of"):
        SMC(resample_at="end")


def test_smc_resamples_on_a_text_reward_of_the_argmax_completion(world):
    dlm, _ = world
    cfg = DenoiseConfig(steps=8, max_new_tokens=8, num_samples=4, seed=2)
    verifier = TextReward("entrgi_core.tinyworld.judges:oracle", name="oracle")     # a dotted path, as the CLI has it
    res = generate(dlm, PROMPTS, reward=verifier, guidance=SMC(intermediate="hard"), config=cfg, diagnose=True)
    assert any(res.particles["resampled_at"]), res.particles     # the verifier's spread resampled particles
    assert all(n > 0 for n in res.compute["rm_forwards"]) and res.compute["rm_backwards"] == [0, 0, 0]
    with pytest.raises(InputError, match="read_with='select' scores the argmax completion as text"):
        SMC(read_with="select")


def test_smc_reads_the_selector_as_its_potential(world):
    dlm, rm = world
    cfg = DenoiseConfig(steps=8, max_new_tokens=8, num_samples=4, seed=2)
    by_rm = generate(dlm, PROMPTS, reward=rm, guidance=SMC(intermediate="hard"), config=cfg)
    by_select = generate(dlm, PROMPTS, reward=rm, select=OracleJudge(), config=cfg,
                         guidance=SMC(intermediate="hard", read_with="select"))
    assert not torch.equal(by_rm.tokens, by_select.tokens)
    assert by_select.compute["rm_forward_tokens"] == [0, 0, 0]         # a function read the potential, no model


def test_adaptive_tempering_does_not_depend_on_the_reward_scale(world):
    dlm, rm = world
    cfg = DenoiseConfig(steps=8, max_new_tokens=8, num_samples=4, seed=1)
    runs = {}
    for scale in (1.0, 100.0):
        reward = rm if scale == 1.0 else Sum([(scale, rm)])
        for beta in (None, 1.0):
            runs[scale, beta] = generate(dlm, PROMPTS, reward=reward, guidance=SMC(beta=beta), config=cfg,
                                         diagnose=True)
    assert torch.equal(runs[1.0, None].tokens, runs[100.0, None].tokens)           # scale-free
    assert runs[1.0, None].particles["resampled_at"] == runs[100.0, None].particles["resampled_at"]
    assert not torch.equal(runs[1.0, 1.0].tokens, runs[100.0, 1.0].tokens)         # a fixed beta is not
    assert all(runs[1.0, None].particles["resampled_at"])                          # and it does resample


def test_adaptive_tempering_keeps_the_ess_at_its_target():
    smc = SMC(ess_threshold=0.5)
    log_weight = torch.zeros(3, 4, dtype=torch.float64)
    increment = torch.tensor([[0.0, 1.0, 2.0, 3.0], [0.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 1e-9]], dtype=torch.float64)
    inverse, binding = smc.inverse_temperature(log_weight, increment)
    w = torch.softmax(inverse[:, None] * increment, 1)
    ess = 1 / (w * w).sum(1)
    assert ess[0].item() == pytest.approx(2.0, rel=1e-6) and binding.tolist() == [True, False, False]
    assert inverse[1].item() == inverse[2].item() == pytest.approx(1e4)            # no spread: the largest allowed


def test_token_log_probs_are_the_samplers_filtered_distribution():
    logits = torch.tensor([[0.5, 0.3, 0.2], [0.2, 0.3, 0.5]]).log()
    tokens = torch.tensor([1, 0])
    full = token_log_probs(logits, tokens, temperature=1.0)
    torch.testing.assert_close(full, torch.tensor([0.3, 0.2], dtype=torch.float64).log())
    nucleus = token_log_probs(logits, torch.tensor([1, 2]), temperature=1.0, top_p=0.7)   # keeps 0.5 and 0.3
    torch.testing.assert_close(nucleus, torch.tensor([0.3 / 0.8, 0.5 / 0.8], dtype=torch.float64).log())
    dropped = token_log_probs(logits, torch.tensor([2, 0]), temperature=1.0, top_k=2)
    assert dropped[0] == -math.inf and dropped[1] == -math.inf
    hot = token_log_probs(logits, tokens, temperature=0.5)                  # p^2, renormalised
    torch.testing.assert_close(hot[0], torch.tensor(0.09 / 0.38, dtype=torch.float64).log())
    with pytest.raises(ValueError, match="greedy"):
        token_log_probs(logits, tokens, temperature=0.0)


def test_derived_keys_are_the_same_bits_for_int_and_tensor_fields():
    keys = torch.tensor([0, 1, -5, 2**62, -2**63])
    for field in (0, 1, 3, 2**63 - 1, -1, 12345678901234):           # ints are mixed on the host
        assert torch.equal(rng.derive(keys, field), rng.derive(keys, torch.tensor(field)))
    assert not torch.equal(rng.derive(keys, 1), rng.derive(keys, 2))


def test_token_log_probs_match_the_sampled_frequencies():
    logits = torch.randn(1, 6, generator=torch.Generator().manual_seed(0)).expand(20000, 6)
    u = rng.uniform(rng.derive(torch.arange(20000), 7))
    tokens, _ = sample_tokens(logits, u, temperature=0.8, top_p=0.9)
    freq = torch.bincount(tokens, minlength=6).double() / 20000
    probs = token_log_probs(logits[:1].expand(6, 6), torch.arange(6), temperature=0.8, top_p=0.9).exp()
    torch.testing.assert_close(freq, probs, atol=0.01, rtol=0)


def test_systematic_resampling():
    w = torch.tensor([[0.5, 0.5, 0.0, 0.0], [0.25, 0.25, 0.25, 0.25], [0.1, 0.2, 0.3, 0.4]])
    u = torch.tensor([0.1, 0.999, 0.5], dtype=torch.float64)
    # points (u + i) / 4: row 0 .025 .275 .525 .775; row 2 .125 .375 .625 .875 against cdf .1 .3 .6 1
    assert systematic(w, u).tolist() == [[0, 0, 1, 1], [0, 1, 2, 3], [1, 2, 3, 3]]


def test_weights_computed_by_hand():
    """One prompt, K=3 particles, two masked positions each (N=6), V=3, every=2 (reads at steps 0,
    2, 4, ...); step 1 commits particle 0's and 1's first position and reads no reward; step 2
    commits particle 2's first position and reads rewards (0.2, 0.5, -0.1) with beta 0.5 and the
    difference potential."""
    smc = FixedReward([[0.2, 0.5, -0.1]], proposal=None, beta=0.5, every=2, ess_threshold=0.0)
    state = smc.begin(1, 3, "cpu")
    p = torch.tensor([0.5, 0.25, 0.25]).log().expand(6, 3)
    q = torch.tensor([0.25, 0.5, 0.25]).log().expand(6, 3).clone()
    rows, cols = torch.tensor([0, 0, 1, 1, 2, 2]), torch.tensor([0, 1, 0, 1, 0, 1])
    tokens = torch.full((3, 2), 9)
    sampled = torch.tensor([1, 0, 0, 2, 1, 1])
    committed = torch.tensor([True, False, True, False, False, False])
    step1 = hand_step(1, tokens, rows, cols)
    assert smc.observe(state, step1, StepUpdate(p, q, sampled, committed, tokens)) is None   # no read at step 1
    # particle 0 took token 1: p/q = 0.25/0.5; particle 1 took token 0: 0.5/0.25
    torch.testing.assert_close(state.log_weight, torch.tensor([math.log(0.5), math.log(2.0), 0.0], dtype=torch.float64))
    committed = torch.tensor([False, False, False, False, True, False])
    step2 = hand_step(2, tokens, rows, cols)
    ancestors = smc.observe(state, step2, StepUpdate(p, q, sampled, committed, tokens))
    log_w = torch.tensor([math.log(0.5) + 0.4, math.log(2.0) + 1.0, math.log(0.5) - 0.2], dtype=torch.float64)
    w = log_w.softmax(0)
    assert ancestors.tolist() == [0, 1, 2]                      # ess_threshold 0: never resampled
    torch.testing.assert_close(state.log_weight, log_w)
    torch.testing.assert_close(state.potential, torch.tensor([0.2, 0.5, -0.1], dtype=torch.float64))
    report = smc.report(state)
    w0 = torch.tensor([0.5, 2.0, 1.0], dtype=torch.float64) / 3.5             # after step 1
    assert report["ess_by_step"][0] == {1: round(float(1 / (w0 * w0).sum()), 4), 2: round(float(1 / (w * w).sum()), 4)}
    assert report["resampled_at"] == [[]]


def test_resampling_draws_the_counter_based_uniform_and_resets_the_weights():
    smc = FixedReward([[0.0, 3.0, 0.0], [1.0, 1.0, 1.0]], proposal=None, beta=0.5, potential="difference",
                      ess_threshold=1.0)
    state = smc.begin(1, 3, "cpu")
    tokens = torch.full((3, 2), 9)
    rows, cols = torch.tensor([0, 1, 2]), torch.tensor([0, 0, 0])
    p = torch.zeros(3, 3)
    none = torch.zeros(3, dtype=torch.bool)
    step = hand_step(4, tokens, rows, cols)
    ancestors = smc.observe(state, step, StepUpdate(p, p, torch.zeros(3, dtype=torch.long), none, tokens))
    w = torch.tensor([0.0, 6.0, 0.0], dtype=torch.float64).softmax(0)
    u = rng.uniform(rng.derive(step.keys[:1], rng.RESAMPLE, 4))
    assert ancestors.tolist() == systematic(w[None], u)[0].tolist()
    assert state.log_weight.tolist() == [0.0, 0.0, 0.0]
    torch.testing.assert_close(state.potential, torch.tensor([0.0, 3.0, 0.0], dtype=torch.float64)[ancestors])
    assert ancestors.tolist().count(1) >= 2                      # the high-reward particle was copied
    # next read: the difference potential is against each particle's inherited reward (3 -> 1)
    smc.observe(state, hand_step(5, tokens, rows, cols), StepUpdate(p, p, torch.zeros(3, dtype=torch.long), none,
                                                                    tokens))
    assert smc.report(state)["resampled_at"] == [[4, 5]]


@pytest.mark.parametrize("potential, expected", [("difference", [0.5, -1.0]), ("max", [0.5, 0.0]), ("sum", [0.5, -0.5])])
def test_potential_increments(potential, expected):
    smc = FixedReward([[0.5, 0.5, 0.5], [-0.5, -0.5, -0.5]], proposal=None, beta=1.0, potential=potential,
                      ess_threshold=0.0)
    state = smc.begin(1, 3, "cpu")
    tokens, rows, cols = torch.full((3, 1), 9), torch.tensor([0, 1, 2]), torch.tensor([0, 0, 0])
    z, none = torch.zeros(3, 3), torch.zeros(3, dtype=torch.bool)
    seen = []
    for i in range(2):
        smc.observe(state, hand_step(i, tokens, rows, cols), StepUpdate(z, z, torch.zeros(3, dtype=torch.long), none,
                                                                        tokens))
        seen.append(float(state.log_weight[0]))
    increments = [seen[0], seen[1] - seen[0]]      # rewards 0.5 then -0.5: max stays 0.5, the sum drops to 0
    assert increments == pytest.approx(expected)


def test_no_reward_weighting_and_no_proposal_is_the_unguided_sampler(dlm):
    base = generate(dlm, PROMPTS, guidance=None, config=CFG)
    smc = generate(dlm, PROMPTS, guidance=SMC(beta=float("inf")), config=CFG, diagnose=True)
    assert not SMC(beta=float("inf")).needs_reward            # and so no reward model was needed
    assert torch.equal(base.tokens, smc.tokens)
    assert all(not r for r in smc.particles["resampled_at"])


@pytest.mark.parametrize("proposal", [None, EntRGi(steps=1), Expectation(steps=1)], ids=["none", "entrgi", "expectation"])
def test_one_particle_is_its_proposal(dlm, rm, proposal):
    cfg = DenoiseConfig(steps=6, max_new_tokens=8, num_samples=1, seed=5)
    alone = generate(dlm, PROMPTS, reward=rm, guidance=proposal, config=cfg)
    smc = generate(dlm, PROMPTS, reward=rm, guidance=SMC(proposal, beta=0.05, ess_threshold=1.0), config=cfg,
                   diagnose=True)
    assert torch.equal(alone.tokens, smc.tokens)
    assert all(set(e.values()) == {1.0} for e in smc.particles["ess_by_step"])


@pytest.mark.parametrize("smc", [SMC(beta=0.05, ess_threshold=1.0), SMC(EntRGi(steps=1), beta=0.1, intermediate="hard"),
                                 SMC(StraightThrough(steps=1), beta=0.2, potential="max", every=2)],
                         ids=["fk", "entrgi-hard", "aps-max-every2"])
def test_a_prompts_particles_are_the_same_alone_or_batched(dlm, rm, smc):
    batched = generate(dlm, PROMPTS, reward=rm, guidance=smc, config=CFG, prompt_ids=["a", "b", "c"], diagnose=True)
    assert any(batched.particles["resampled_at"]), "the test needs resampling to happen"
    for i, pid in enumerate(["a", "b", "c"]):
        alone = generate(dlm, [PROMPTS[i]], reward=rm, guidance=smc, config=CFG, prompt_ids=[pid], diagnose=True)
        assert torch.equal(alone.tokens[0], batched.tokens[i]), f"prompt {pid} changed when batched"
        assert alone.particles["resampled_at"][0] == batched.particles["resampled_at"][i]
        assert alone.particles["ess_by_step"][0] == pytest.approx(batched.particles["ess_by_step"][i], abs=1e-3)


def test_resampling_copies_particles_which_then_diverge(dlm, rm):
    cfg = DenoiseConfig(steps=8, max_new_tokens=8, num_samples=4, seed=1)
    res = generate(dlm, PROMPTS, reward=rm, guidance=SMC(beta=0.01, ess_threshold=1.0), config=cfg, diagnose=True)
    assert all(len(r) == cfg.steps - 1 for r in res.particles["resampled_at"])      # every step but the last
    assert len({tuple(t) for t in res.tokens.reshape(-1, 8).tolist()}) > len(PROMPTS)   # not all copies of one


def test_smc_raises_the_reward_over_its_proposal_on_the_tiny_world(world):
    dlm, rm = world
    prompts = [json.loads(x)["prompt"] for x in tinyworld.PROMPTS.read_text().splitlines() if x][:6]
    cfg = DenoiseConfig(steps=16, max_new_tokens=32, num_samples=4, seed=200)
    gains = []
    for proposal in (None, Expectation(steps=1)):
        plain = generate(dlm, prompts, reward=rm, guidance=proposal, config=cfg)
        smc = generate(dlm, prompts, reward=rm, guidance=SMC(proposal, beta=0.03), config=cfg)
        gains.append(float(smc.avg_reward.mean() - plain.avg_reward.mean()))
    assert gains[0] > 0.2 and gains[1] > 0.15, gains      # measured 0.39 and 0.42


def test_potential_reads_are_counted_as_compute(dlm, rm):
    cfg = DenoiseConfig(steps=6, max_new_tokens=8, num_samples=2, seed=5)
    res = generate(dlm, PROMPTS[:1], reward=rm, guidance=SMC(beta=0.5, every=2), config=cfg)
    c = {k: v[0] for k, v in res.compute.items()}
    assert c["rm_forwards"] == 3 * 2                # reads at steps 0, 2 and 4 (not 5, the last)
    assert c["rm_backwards"] == 0 and c["select_calls"] == 2   # the final scoring is the selector's


@pytest.mark.parametrize("kwargs, message", [
    ({"beta": 0}, "beta must be None .adaptive tempering. or > 0"), ({"beta": float("nan")}, "or > 0"),
    ({"potential": "mean"}, "potential must be one of"), ({"intermediate": "soft"}, "intermediate must be one of"),
    ({"every": 0}, "every must be an integer"), ({"ess_threshold": 1.5}, "ess_threshold must lie in"),
    ({"scheme": "multinomial"}, "scheme must be one of"), ({"proposal": "EntRGi"}, "proposal must be a guidance"),
    ({"proposal": SMC()}, "cannot itself be SMC"),
])
def test_bad_smc_settings(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SMC(**kwargs)


def test_greedy_sampler_is_refused_before_model_compute(rm):

    with pytest.raises(ValueError, match="importance weights need token probabilities"):
        generate(exploding_model(), ["x"], reward=rm, guidance=SMC(EntRGi(temperature=0.7)),
                 config=DenoiseConfig(temperature=0.0))


def test_smc_without_a_reward_model_is_refused(dlm):
    with pytest.raises(ValueError, match="SMC needs a reward model"):
        generate(dlm, PROMPTS, guidance=SMC(), config=SMALL)


@pytest.mark.slow
def test_cli_runs_smc_with_a_gradient_proposal_on_one_and_two_processes(cli_config, tmp_path):
    args = ["--guidance", "guidance.SMC", "--guidance.proposal", "guidance.EntRGi", "--guidance.proposal.steps", "1",
            "--guidance.beta", "0.2", "--guidance.ess_threshold", "1.0", "--diagnose", "true"]
    cli("predict", "--config", str(cli_config), "--output_dir", str(tmp_path / "one"), *args)
    cli("predict", "--config", str(cli_config), "--output_dir", str(tmp_path / "two"), *args,
        "--trainer.devices", "2", "--trainer.strategy", "ddp")
    one = read_jsonl(tmp_path / "one" / "predictions.jsonl")
    assert strip(one) == strip(read_jsonl(tmp_path / "two" / "predictions.jsonl"))
    assert {r["method"] for r in one} == {"smc"}
    assert all(set(r["ess_by_step"]) == {str(s) for s in range(4)} and r["resampled_at"] for r in one)
    summary = json.loads((tmp_path / "one" / "summary.json").read_text())
    assert summary["config"]["guidance"]["proposal"]["class"] == "guidance.entrgi.EntRGi"


def test_guided_denoiser_takes_smc(dlm, rm):
    from entrgi_core.module import GuidedDenoiser

    module = GuidedDenoiser(dlm, rm, SMC(NoGuidance(), beta=0.3), config=CFG, diagnose=True)
    recs = module.predict_step({"prompt": PROMPTS[:2], "id": ["x", "y"]})
    assert [r["prompt_id"] for r in recs] == ["x", "y"] and all("ess_by_step" in r for r in recs)
    assert module.run_config()["guidance"]["beta"] == 0.3
