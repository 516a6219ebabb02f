"""Rewards in every role (issue 18): a reward guides, a selector picks Top@1, judges only score;
text rewards, composites, SMC's potential from text and its scale-free default."""
import json

import pytest
import torch

from entrgi_core import DenoiseConfig, generate
from entrgi_core.contract import default_relaxation
from entrgi_core.errors import InputError, ScoreError
from entrgi_core.tinyworld import OracleJudge, ValidityJudge
from guidance import SMC, EntRGi, Expectation
from rewards import Sum, TextReward
from tests.conftest import PROMPTS, exploding_model, in_process_cli, make_step, read_jsonl, snapshot

CFG = DenoiseConfig(steps=4, max_new_tokens=6, num_samples=3, seed=7)


def length(prompts, responses):
    return [float(len(r.split())) for r in responses]


def words_seen(prompts, responses):
    words_seen.calls.append(list(responses))
    return [float(len(r)) for r in responses]


words_seen.calls = []


def nan_for_the_second(prompts, responses):
    return [float("nan") if i == 1 else 0.0 for i in range(len(responses))]


def one_short(prompts, responses):
    return [0.0] * (len(responses) - 1)


def raises(prompts, responses):
    raise RuntimeError("the verifier is down")


# ----------------------------------------------------------------------------- text rewards

def test_a_text_reward_runs_best_of_n_without_embeddings_or_alignment(dlm, monkeypatch):
    for name in ("aligned", "prepare", "score_embeds"):                  # guidance-only paths: never reached
        monkeypatch.setattr(TextReward, name, lambda *a, **k: pytest.fail("a text reward was read as embeddings"))
    words_seen.calls.clear()
    res = generate(dlm, PROMPTS[:2], reward=TextReward(words_seen, name="chars"), config=CFG)
    assert words_seen.calls == [[t for row in res.texts for t in row]]   # one call on the 6 final responses
    expected = torch.tensor([[float(len(t)) for t in row] for row in res.texts])
    assert torch.equal(res.rewards, expected) and torch.equal(res.best_index, expected.argmax(1))
    assert res.compute["rm_forwards"] == [0, 0] and res.compute["select_calls"] == [3, 3]
    assert res.compute["select_flops"] == [0, 0]                        # a function has no parameters


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


def test_a_gated_strategy_refuses_a_text_only_reward_before_compute():
    model = exploding_model()
    for strategy in (EntRGi(steps=1), Expectation(steps=1), SMC(Expectation(steps=1), intermediate="hard")):
        for reward in (TextReward(length), Sum([(1.0, TextReward(length)), (0.5, ValidityJudge())])):
            with pytest.raises(InputError, match="scores text only") as err:
                generate(model, PROMPTS[:1], reward=reward, guidance=strategy, config=CFG)
            assert "select=" in str(err.value) and "rewards.HFRewardModel" in str(err.value)


@pytest.mark.parametrize("fn, says, ids", [
    (nan_for_the_second, "not a finite number", "['first']"),              # response 1 of 6: the first prompt's
    (one_short, "returned 5 values for 6 responses", "['first', 'second']"),
    (raises, "RuntimeError: the verifier is down", "['first', 'second']")])
def test_bad_text_reward_output_names_the_prompt_id(dlm, rm, fn, says, ids):
    for role in ("reward", "select", "judges"):
        kwargs = {"reward": rm, "select": None, "judges": None}
        kwargs[role] = [TextReward(fn, name="bad")] if role == "judges" else TextReward(fn, name="bad")
        with pytest.raises(ScoreError, match=says) as err:
            generate(dlm, PROMPTS[:2], config=CFG, prompt_ids=["first", "second"], **kwargs)
        assert "'bad'" in str(err.value) and f"prompt id(s) {ids}" in str(err.value), (role, str(err.value))
    with pytest.raises(ScoreError, match=says) as err:                 # SMC's potential on partial responses
        generate(dlm, PROMPTS[:2], reward=TextReward(fn, name="bad"), guidance=SMC(intermediate="hard"),
                 config=CFG, prompt_ids=["first", "second"])
    assert f"partial responses of prompt id(s) {ids}" in str(err.value)


def test_text_reward_arguments_are_checked():
    with pytest.raises(ScoreError, match="cannot import 'nowhere.at_all:fn'"):
        TextReward("nowhere.at_all:fn")
    with pytest.raises(ScoreError, match="batch_size must be an integer >= 1"):
        TextReward(length, batch_size=0)
    with pytest.raises(InputError, match="judges need distinct names"):
        generate(exploding_model(), PROMPTS[:1], judges=[OracleJudge(), OracleJudge()], config=CFG)
    with pytest.raises(InputError, match="score_text"):
        generate(exploding_model(), PROMPTS[:1], select=object(), config=CFG)


def test_text_rewards_score_in_batches(dlm):
    seen = []
    reward = TextReward(lambda p, r: seen.append(len(r)) or [0.0] * len(r), batch_size=4, name="batched")
    generate(dlm, PROMPTS, reward=reward, config=CFG)
    assert seen == [4, 4, 1]


# ----------------------------------------------------------------------------- separate roles

def test_select_changes_top1_and_nothing_else(dlm, rm):
    guided = EntRGi(steps=1)
    by_reward = generate(dlm, PROMPTS, reward=rm, guidance=guided, config=CFG)
    shortest = TextReward(lambda p, r: [-float(len(t)) for t in r], name="shortest")
    by_length = generate(dlm, PROMPTS, reward=rm, guidance=guided, config=CFG, select=shortest)
    assert torch.equal(by_reward.tokens, by_length.tokens) and torch.equal(by_reward.rewards, by_length.rewards)
    assert torch.equal(by_reward.avg_reward, by_length.avg_reward)
    expected = torch.tensor([[-float(len(t)) for t in row] for row in by_length.texts])
    assert torch.equal(by_length.select_scores, expected) and torch.equal(by_length.best_index, expected.argmax(1))
    assert not torch.equal(by_reward.best_index, by_length.best_index)  # it did pick differently here
    picked = by_length.rewards.gather(1, by_length.best_index[:, None])[:, 0]
    assert torch.equal(by_length.best_reward, picked)                   # Top@1's reward, as the reward scores it
    rec = by_length.records()[0]
    assert rec["selected_by"] == "shortest" and rec["best_index"] == int(expected[0].argmax())
    same = {k: v for k, v in by_reward.compute.items() if not k.startswith(("select", "eval", "flops", "forward_eq"))}
    assert same == {k: by_length.compute[k] for k in same}              # the guidance's budget is the same
    assert by_length.compute["eval_calls"] == [3, 3, 3]                 # the reward still scores: evaluation


def test_judges_never_change_the_samples(world):
    dlm, rm = world
    cfg = DenoiseConfig(steps=8, max_new_tokens=8, num_samples=4, seed=3)
    for strategy in (EntRGi(steps=1), SMC(Expectation(steps=1))):
        plain = generate(dlm, PROMPTS, reward=rm, guidance=strategy, config=cfg)
        judged = generate(dlm, PROMPTS, reward=rm, guidance=strategy, config=cfg,
                          judges=[OracleJudge(), ValidityJudge()])
        assert torch.equal(plain.tokens, judged.tokens) and torch.equal(plain.best_index, judged.best_index)
        assert {k: v for k, v in plain.compute.items() if not k.startswith("eval")} == \
            {k: v for k, v in judged.compute.items() if not k.startswith("eval")}
        rec = judged.records()[1]
        oracle = OracleJudge().score_text([PROMPTS[1]] * 4, rec["responses"]).tolist()
        assert rec["judges"]["oracle"]["scores"] == pytest.approx(oracle)
        assert rec["judges"]["oracle"]["top1"] == pytest.approx(oracle[rec["best_index"]])
        assert rec["judges"]["oracle"]["avg"] == pytest.approx(sum(oracle) / 4)
        assert set(rec["judges"]["valid"]["scores"]) <= {0.0, 1.0}


# ----------------------------------------------------------------------------- composites

def test_composite_gradients_are_the_weighted_sum_of_the_terms(dlm, rm, world):
    other = world[1]                                                    # a second reward model, other weights
    tokens = torch.full((2, 6), dlm.mask_id)
    rows, cols = torch.tensor([0, 0, 1, 1]), torch.tensor([1, 3, 0, 2])
    torch.manual_seed(0)
    logits = torch.randn(4, dlm.vocab_size)
    hard = torch.randint(0, dlm.vocab_size, (4,))

    def grad(reward):
        step = make_step(dlm, reward, tokens, rows, cols)
        phi = logits.clone().requires_grad_(True)
        reading, _ = step.read_relaxed(phi, hard, default_relaxation(step))
        reading.rewards.sum().backward()
        return reading.rewards.detach(), phi.grad

    (r1, g1), (r2, g2) = grad(rm), grad(other)
    total = Sum([(0.7, rm), (-0.3, other), (2.0, TextReward(length))])   # a text term adds no gradient
    r, g = grad(total)
    torch.testing.assert_close(r, 0.7 * r1 - 0.3 * r2)
    torch.testing.assert_close(g, 0.7 * g1 - 0.3 * g2)
    assert g1.abs().sum() > 0 and g2.abs().sum() > 0


def test_a_composite_guides_through_each_term_and_records_them(dlm, rm):
    one = generate(dlm, PROMPTS[:2], reward=rm, guidance=EntRGi(steps=1), config=CFG)
    same = generate(dlm, PROMPTS[:2], reward=Sum([(1.0, rm)]), guidance=EntRGi(steps=1), config=CFG)
    torch.testing.assert_close(same.rewards, one.rewards) and torch.equal(same.tokens, one.tokens)
    total = Sum([(1.0, rm), (-0.1, TextReward(length, name="words"))])
    res = generate(dlm, PROMPTS[:2], reward=total, guidance=EntRGi(steps=1), config=CFG)
    assert torch.equal(res.tokens, one.tokens)                         # the text term only reads the end
    words = torch.tensor([[float(len(t.split())) for t in row] for row in res.texts])
    torch.testing.assert_close(res.rewards, res.reward_terms[rm.name] - 0.1 * words)
    assert res.records()[0]["reward_terms"]["words"] == words[0].tolist()
    with pytest.raises(InputError, match="distinct names"):
        Sum([(1.0, rm), (1.0, rm)])
    with pytest.raises(InputError, match="must be a number"):
        Sum([("heavy", rm)])


# ----------------------------------------------------------------------------- SMC's default

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


# ----------------------------------------------------------------------------- the command line

@pytest.mark.slow
def test_cli_judges_and_select_write_every_record_and_the_summary(cli_config, tmp_path):
    out = tmp_path / "out"
    judges = json.dumps([{"class_path": "entrgi_core.tinyworld.OracleJudge"}])
    code, err = in_process_cli("predict", "--config", str(cli_config), "--judges", judges,
                               "--select", "rewards.TextReward", "--select.fn", "tests.test_roles:length")
    assert code == 0, err
    recs = read_jsonl(out / "predictions.jsonl")
    assert len(recs) == 7 and all(set(r["judges"]) == {"oracle"} and len(r["judges"]["oracle"]["scores"]) == 2
                                  for r in recs)
    assert all(r["selected_by"] == "length" and r["select_scores"] == length(None, r["responses"]) for r in recs)
    summary = json.loads((out / "summary.json").read_text())
    top1 = sum(r["judges"]["oracle"]["top1"] for r in recs) / 7
    assert summary["judges"]["oracle"]["mean_top1"] == pytest.approx(top1)
    assert summary["selected_by"] == "length"
    assert json.loads((out / "run.json").read_text())["judges"][0]["name"] == "oracle"


@pytest.mark.slow
def test_cli_bad_text_reward_is_one_line_and_the_output_directory_is_unchanged(cli_config, tmp_path):
    out = tmp_path / "out"
    assert in_process_cli("predict", "--config", str(cli_config))[0] == 0
    before = snapshot(out)
    for fn in ("nan_for_the_second", "one_short", "raises"):
        code, err = in_process_cli("predict", "--config", str(cli_config), "--overwrite", "true",
                                   "--select", "rewards.TextReward", "--select.fn", f"tests.test_roles:{fn}")
        lines = [ln for ln in err.splitlines() if ln.startswith("entrgi: error")]
        assert code == 2 and len(lines) == 1 and "prompt id(s) ['p" in lines[0] and "Traceback" not in err, err
        assert snapshot(out) == before, fn
