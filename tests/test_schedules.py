"""Commit schedules (entrgi_core.schedules): the rules by hand, the reference samplers (Dream,
LLaDA), blocks, one contract suite over every schedule the package exports, and a schedule
defined only in this file run through generate, the CLI and SMC."""
import json

import pytest
import torch

from entrgi_core import DenoiseConfig, InputError, LLaDALM, MaskedLM, generate
from entrgi_core.config import old_spelling
from entrgi_core.schedules import SCHEDULES, Blocks, CommitView, Dream, EntropyBound, Factor, LLaDA, ParallelSchedule, Threshold
from guidance import SMC, EntRGi, Expectation
from tests.helpers import PROMPTS, ROOT, exploding_model, in_process_cli, read_jsonl


class AtMost(ParallelSchedule):
    """A schedule written only here, as a user would: each step commits the ``most`` most
    confident positions of the row's block (fewer when fewer are left)."""

    def __init__(self, most: int = 2):
        self.most = most

    def accept(self, ranked):
        return torch.arange(ranked.shape[1], device=ranked.device)[None, :] < self.most


def llada_reference(model, prompt_ids, *, steps, gen_length, block_length):
    """LLaDA's greedy generate (low-confidence remasking, cfg 0), written from its description."""
    p = len(prompt_ids)
    x = torch.full((1, p + gen_length), model.mask_id, dtype=torch.long)
    x[0, :p] = torch.tensor(prompt_ids)
    ones, pos = torch.ones_like(x, dtype=torch.bool), torch.arange(x.shape[1])[None]
    blocks = gen_length // block_length
    per_block = steps // blocks
    committed = []
    for b in range(blocks):
        lo, hi = p + b * block_length, p + (b + 1) * block_length
        n = int((x[0, lo:hi] == model.mask_id).sum())
        counts = [n // per_block + (1 if i < n % per_block else 0) for i in range(per_block)]
        for i in range(per_block):
            mask_index = x == model.mask_id
            logits = model.logits(x, ones, pos)
            x0 = logits.argmax(-1)
            x0_p = torch.softmax(logits.double(), -1).gather(-1, x0[..., None]).squeeze(-1)
            x0_p[:, hi:] = float("-inf")
            conf = torch.where(mask_index, x0_p, torch.full_like(x0_p, float("-inf")))
            idx = torch.topk(conf[0], k=counts[i]).indices
            x[0, idx] = x0[0, idx]
            committed.append(counts[i])
    return x[0, p:], committed


CASES = [(p, s, g, b) for p in PROMPTS[:2] for s, g, b in
         [(8, 8, 8), (4, 8, 8), (8, 8, 4), (4, 8, 2), (6, 12, 4), (3, 12, 12)]]


PARALLEL = [Threshold(0.9), Factor(1.0), EntropyBound(0.1)]
PARALLEL_IDS = ["threshold", "factor", "entropy_bound"]


RAGGED = ["write a review of the hotel", "write a very long review of this phone please", "write a review of the zoo"]


def commit(schedule, stat, *, eligible=None, last=False, sampled=None, stop=99, deprioritize_eos=True):
    """One row: ``stat`` at its masked positions 0..n-1 -> the committed positions."""
    n = len(stat)
    view = CommitView(config=DenoiseConfig(deprioritize_eos=deprioritize_eos), stat=torch.tensor(stat),
                      sampled=torch.tensor(sampled if sampled is not None else [1] * n),
                      rows=torch.zeros(n, dtype=torch.long), cols=torch.arange(n),
                      eligible=torch.ones(1, n, dtype=torch.bool) if eligible is None else torch.tensor([eligible]),
                      last=torch.tensor([last]), blocks=Blocks(1, n, 1, 4), index=0,
                      keys=torch.zeros(1, dtype=torch.long), stop_ids=torch.tensor([stop]))
    return schedule.commit(view)[0].nonzero().squeeze(1).tolist()


@pytest.mark.parametrize("cfg", [
    DenoiseConfig(steps=8, max_new_tokens=8, num_samples=2, alg="origin"),
    DenoiseConfig(steps=8, max_new_tokens=8, num_samples=2, alg="maskgit_plus", top_k=5),
    DenoiseConfig(steps=8, max_new_tokens=8, num_samples=2, alg="topk_margin", top_p=1.0),
    DenoiseConfig(steps=8, max_new_tokens=8, num_samples=2, alg="entropy", alg_temp=0.5),
    DenoiseConfig(steps=8, max_new_tokens=8, num_samples=2, block_length=4),
    DenoiseConfig(steps=4, max_new_tokens=8, num_samples=2, temperature=0.0),
    DenoiseConfig(steps=4, max_new_tokens=8, num_samples=2, block_length=4, schedule=LLaDA(), alg="low_confidence"),
    DenoiseConfig(steps=5, max_new_tokens=8, num_samples=2, schedule=LLaDA(), alg="random"),
], ids=["origin", "maskgit_topk", "margin", "alg_temp", "blocks", "greedy", "llada_low_confidence", "llada_random"])
def test_every_schedule_commits_everything_deterministically(dlm, rm, cfg):
    guide = EntRGi(steps=1, temperature=0.7)            # explicit: the greedy sampler has no temperature
    a = generate(dlm, PROMPTS[:2], reward=rm, guidance=guide, config=cfg)
    b = generate(dlm, PROMPTS[:2], reward=rm, guidance=guide, config=cfg)
    assert (a.tokens != dlm.mask_id).all() and torch.equal(a.tokens, b.tokens)


def test_block_schedule_fills_blocks_in_order(dlm):
    class Recording(MaskedLM):
        seen = []

        def forward_logits(self, input_ids, *a):
            type(self).seen.append(input_ids[0, -8:].clone())
            return super().forward_logits(input_ids, *a)

    model = Recording.from_model(dlm.model, dlm.tokenizer)
    res = generate(model, PROMPTS[:1], config=DenoiseConfig(steps=4, max_new_tokens=8, num_samples=1, block_length=4))
    assert res.rewards is None
    at_block_2 = Recording.seen[2]                     # canvas entering the second block's first step
    assert (at_block_2[:4] != dlm.mask_id).all() and (at_block_2[4:] == dlm.mask_id).all()
    assert (Recording.seen[1][4:] == dlm.mask_id).all()
    assert (res.tokens != dlm.mask_id).all()


def test_llada_and_dream_counts_by_hand():
    llada = LLaDA()
    at_start = torch.tensor([5, 8, 2, 0])                  # masked positions of four rows' blocks at their start
    assert [llada.counts(at_start, at_start, i, 4).tolist() for i in range(4)] == [
        [2, 2, 1, 0], [1, 2, 1, 0], [1, 2, 0, 0], [1, 2, 0, 0]]          # 5 = 2+1+1+1, 8 = 2x4, 2 = 1+1
    # Dream, 4 steps: t = 1, 0.75025, 0.5005, 0.25075, 0.001 -> shares 0.24975, 0.33289, 0.49900, then all
    dream = Dream()
    assert [round(dream.share(i, 4), 5) for i in range(4)] == [0.24975, 0.33289, 0.499, 1.0]
    masked = torch.tensor([8, 3])
    assert [dream.counts(masked, masked, i, 4).tolist() for i in range(4)] == [[1, 0], [2, 0], [3, 1], [8, 3]]


def test_llada_schedule_matches_lladas_greedy_sampler(dlm):
    llada = LLaDALM.from_model(dlm.model, dlm.tokenizer)
    assert llada.default_schedule == LLaDA()
    for prompt, steps, gen, block in CASES:                       # 12 greedy cases
        ids = llada.encode_prompts([prompt])[0]
        want, _ = llada_reference(llada, ids, steps=steps, gen_length=gen, block_length=block)
        cfg = DenoiseConfig(steps=steps, max_new_tokens=gen, num_samples=1, temperature=0.0, top_p=1.0,
                            alg="low_confidence", block_length=block, deprioritize_eos=False)
        got = generate(llada, [prompt], config=cfg).tokens[0, 0]
        assert torch.equal(got, want), (prompt, steps, gen, block)


def test_llada_schedule_commits_lladas_counts_per_step_and_block(dlm):
    class Recording(LLaDALM):
        seen = []

        def forward_logits(self, input_ids, *a):
            type(self).seen.append((input_ids[0] == self.mask_id).sum().item())
            return super().forward_logits(input_ids, *a)

    model = Recording.from_model(dlm.model, dlm.tokenizer)
    generate(model, PROMPTS[:1], config=DenoiseConfig(steps=6, max_new_tokens=10, num_samples=1, block_length=5))
    masked = Recording.seen + [0]
    per_step = [a - b for a, b in zip(masked, masked[1:])]
    assert per_step == [2, 2, 1, 2, 2, 1]           # each block: 5 over 3 steps, the remainder first


def test_origin_rule_needs_dream_shares_before_model_compute(dlm):
    class ExplodingLLaDA(LLaDALM):
        def forward_logits(self, *a):
            raise AssertionError("model ran")
    llada = ExplodingLLaDA.from_model(dlm.model, dlm.tokenizer)
    with pytest.raises(ValueError, match="alg='origin'.*needs Dream's schedule .*, not LLaDA"):
        generate(llada, ["x"], config=DenoiseConfig(steps=2, max_new_tokens=4, alg="origin"))


def test_the_rules_by_hand():
    assert commit(Threshold(0.9), [0.95, 0.5, 0.92, 0.99]) == [0, 2, 3]
    assert commit(Threshold(0.9), [0.3, 0.6, 0.2]) == [1]                      # at least one: the most confident
    # factor 1: sorted 0.99, 0.8, 0.7, 0.2: 2 x 0.01 < 1, 3 x 0.2 < 1, 4 x 0.3 >= 1 -> two
    assert commit(Factor(1.0), [0.2, 0.8, 0.99, 0.7]) == [1, 2]
    assert commit(Factor(0.5), [0.2, 0.8, 0.99, 0.7]) == [2]                   # 3 x 0.2 >= 0.5
    # entropy bound 0.05: sorted 0.01, 0.02, 0.05, 0.3; sum - max = 0, 0.01, 0.03, 0.08 -> three
    assert commit(EntropyBound(0.05), [0.01, 0.05, 0.3, 0.02]) == [0, 1, 3]
    assert commit(EntropyBound(0.0), [0.4, 0.7]) == [0]                         # the lowest entropy, always


def test_blocks_the_last_step_and_eos():
    assert commit(Threshold(0.9), [0.99, 0.95, 0.99, 0.2], eligible=[False, True, True, True]) == [1, 2]
    assert commit(Threshold(0.9), [0.3, 0.6, 0.2], last=True) == [0, 1, 2]     # the block's last step: all
    # a confident EOS (id 99) ranks after a position that fails: it waits; without the rule it commits
    assert commit(Threshold(0.9), [0.99, 0.5, 0.97], sampled=[1, 1, 99]) == [0]
    assert commit(Threshold(0.9), [0.99, 0.5, 0.97], sampled=[1, 1, 99], deprioritize_eos=False) == [0, 2]
    assert commit(Threshold(0.9), [0.99, 0.93, 0.97], sampled=[1, 1, 99]) == [0, 1, 2]   # the rest passed


def test_bad_parameters_are_refused_before_any_compute(rm):
    for make, message in ((lambda: Threshold(0.0), "threshold must lie in \\(0, 1\\]"),
                          (lambda: Factor(-1.0), "factor must be > 0"), (lambda: EntropyBound(-0.1), "bound must be >= 0"),
                          (lambda: Dream(eps=1.0), "eps must lie in \\(0, 1\\)"), (lambda: Threshold(True), "got True")):
        with pytest.raises(InputError, match=message):
            make()
    model = exploding_model()
    for alg in ("random", "origin", "topk_margin", "low_confidence"):
        with pytest.raises(InputError, match="EntropyBound ranks positions by its own statistic"):
            generate(model, ["x"], config=DenoiseConfig(steps=2, max_new_tokens=4, schedule=EntropyBound(), alg=alg))
    with pytest.raises(InputError, match="alg_temp=0"):
        generate(model, ["x"], config=DenoiseConfig(steps=2, max_new_tokens=4, schedule=Threshold(), alg_temp=0.5))
    with pytest.raises(InputError, match="set block_length"):
        DenoiseConfig(steps=2, max_new_tokens=4, cache="dual")


@pytest.mark.parametrize("schedule", PARALLEL, ids=PARALLEL_IDS)
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
    class Recording(MaskedLM):
        seen = []

        def forward_logits(self, input_ids, *a, **k):
            type(self).seen.append(input_ids[:, -8:].clone())
            return super().forward_logits(input_ids, *a, **k)

    model = Recording.from_model(dlm.model, dlm.tokenizer)      # random weights: nothing passes 0.9
    cfg = DenoiseConfig(steps=4, max_new_tokens=8, num_samples=1, block_length=4, schedule=Threshold(0.9))
    res = generate(model, PROMPTS[:1], config=cfg)
    assert (res.tokens != dlm.mask_id).all() and res.denoising_steps == [4]
    first, second, third = Recording.seen[:3]
    assert (first == dlm.mask_id).sum() == 8 and (second[0, :4] != dlm.mask_id).sum() == 1   # one, then the rest
    assert (third[0, :4] != dlm.mask_id).all() and (third[0, 4:] == dlm.mask_id).all()       # block 2 starts full


# ----------------------------------------------------------------------------- the schedule contract

CONTRACT = [cls() for cls in SCHEDULES] + [AtMost(2)]          # every schedule the package exports, and one of ours
CONTRACT_IDS = [type(s).__name__ for s in CONTRACT]


def test_every_exported_schedule_is_in_the_contract():
    assert {type(s) for s in CONTRACT} >= set(SCHEDULES)
    assert {type(s) for s in CONTRACT} - set(SCHEDULES) == {AtMost}


@pytest.mark.parametrize("schedule", CONTRACT, ids=CONTRACT_IDS)
def test_a_prompt_is_the_same_alone_or_in_a_ragged_batch(world, schedule):
    dlm, rm = world
    cfg = DenoiseConfig(steps=16, max_new_tokens=16, num_samples=2, schedule=schedule, block_length=8, seed=5)
    for guidance in (EntRGi(steps=1), SMC(Expectation(steps=1), beta=0.1)):
        batched = generate(dlm, RAGGED, reward=rm, guidance=guidance, config=cfg, prompt_ids=["a", "b", "c"])
        alone = generate(dlm, RAGGED[1:2], reward=rm, guidance=guidance, config=cfg, prompt_ids=["b"])
        assert torch.equal(alone.tokens[0], batched.tokens[1])
        assert {k: v[0] for k, v in alone.compute.items()} == {k: v[1] for k, v in batched.compute.items()}
        assert alone.denoising_steps[0] == batched.denoising_steps[1]
        assert (batched.tokens != dlm.mask_id).all()


@pytest.mark.parametrize("schedule", CONTRACT, ids=CONTRACT_IDS)
def test_a_cache_refreshed_every_step_is_the_uncached_sampler(world, schedule):
    dlm, rm = world
    over = dict(steps=8, max_new_tokens=16, num_samples=2, block_length=4, schedule=schedule)
    plain = generate(dlm, PROMPTS[:2], reward=rm, guidance=EntRGi(steps=1), config=DenoiseConfig(**over))
    cached = generate(dlm, PROMPTS[:2], reward=rm, guidance=EntRGi(steps=1),
                      config=DenoiseConfig(**over, cache="dual", cache_refresh=1))
    assert torch.equal(cached.tokens, plain.tokens) and cached.compute == plain.compute


@pytest.mark.parametrize("schedule", CONTRACT, ids=CONTRACT_IDS)
def test_switched_off_guidance_is_unguided_under_each_schedule(world, schedule):
    dlm, rm = world
    cfg = DenoiseConfig(steps=16, max_new_tokens=16, num_samples=2, schedule=schedule)
    base = generate(dlm, PROMPTS, reward=rm, config=cfg)
    for off in (EntRGi(steps=0), Expectation(lr=0.0), SMC(beta=float("inf"))):
        assert torch.equal(generate(dlm, PROMPTS, reward=rm, guidance=off, config=cfg).tokens, base.tokens)


@pytest.mark.parametrize("schedule", CONTRACT, ids=CONTRACT_IDS)
def test_settings_name_the_class_and_its_arguments(schedule):
    settings = json.loads(json.dumps(schedule.settings()))
    assert settings["class"].endswith(type(schedule).__name__)
    assert type(schedule)(**{k: v for k, v in settings.items() if k != "class"}) == schedule
    assert DenoiseConfig(schedule=schedule).to_dict()["schedule"] == settings


# ----------------------------------------------------------------------------- a schedule written here

def test_a_schedule_written_here_runs_through_generate_and_smc(world):
    dlm, rm = world
    cfg = DenoiseConfig(steps=16, max_new_tokens=16, num_samples=2, schedule=AtMost(3))
    for guidance in (None, EntRGi(steps=1), SMC(Expectation(steps=1))):
        res = generate(dlm, PROMPTS, reward=rm, guidance=guidance, config=cfg)
        assert (res.tokens != dlm.mask_id).all()
        assert all(s >= 16 / 3 for s in res.denoising_steps) and max(res.tokens_per_forward) <= 3


def test_a_schedule_written_here_runs_through_the_cli_by_class_path(cli_config, tmp_path):
    out = tmp_path / "at_most"
    code, err = in_process_cli("predict", "--config", str(cli_config), "--sampling.schedule",
                               "tests.test_schedules.AtMost", "--sampling.schedule.most", "3", "--data.limit", "2",
                               "--output_dir", str(out))
    assert code == 0, err
    recs = read_jsonl(out / "predictions.jsonl")
    assert len(recs) == 2 and all(1 < r["tokens_per_forward"] <= 3 for r in recs)
    run = json.loads((out / "run.json").read_text())
    assert run["config"]["schedule"] == {"class": "tests.test_schedules.AtMost", "most": 3}


def test_an_output_directory_of_the_old_spelling_is_refused_with_its_reason(cli_config, tmp_path):
    out = tmp_path / "old"
    code, err = in_process_cli("predict", "--config", str(cli_config), "--data.limit", "1", "--output_dir", str(out))
    assert code == 0, err
    run = json.loads((out / "run.json").read_text())
    run["config"].update(schedule="threshold", threshold=0.9, factor=1.0, entropy_bound=0.1)   # as 0.1.0 wrote it
    (out / "run.json").write_text(json.dumps(run))
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    code, err = in_process_cli("predict", "--config", str(cli_config), "--output_dir", str(out))
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "earlier entrgi whose commit schedule was a string" in err and "--overwrite true" in err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert old_spelling(DenoiseConfig().to_dict()) is None


def test_the_old_string_spelling_gets_a_pointer_to_the_class(cli_config):
    code, err = in_process_cli("predict", "--config", str(cli_config), "--sampling.schedule", "entropy_bound")
    assert code == 2 and "Did you mean 'entrgi_core.schedules.EntropyBound'?" in err


def test_guidance_reads_the_guided_logits_for_the_commit(world):
    """Under a parallel schedule the statistic is read from the logits the tokens are drawn from."""
    dlm, rm = world
    cfg = DenoiseConfig(steps=32, max_new_tokens=32, num_samples=2, schedule=EntropyBound(0.1))
    plain = generate(dlm, PROMPTS, reward=rm, config=cfg)
    guided = generate(dlm, PROMPTS, reward=rm, guidance=Expectation(steps=3, lr=2.0), config=cfg)
    assert guided.denoising_steps != plain.denoising_steps and float(guided.avg_reward.mean()) > float(plain.avg_reward.mean())


@pytest.mark.slow
def test_the_cli_runs_threshold_decoding_and_records_tokens_per_forward(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    out = tmp_path / "fast"
    code, err = in_process_cli("predict", "--config", "configs/tiny.yaml", "--sampling.schedule",
                               "entrgi_core.schedules.Threshold", "--sampling.schedule.threshold", "0.9",
                               "--data.limit", "4", "--output_dir", str(out))
    assert code == 0, err
    recs = read_jsonl(out / "predictions.jsonl")
    assert len(recs) == 4 and all(r["tokens_per_forward"] > 1 and r["denoising_steps"] < 32 for r in recs)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["mean_tokens_per_forward"] == pytest.approx(sum(r["tokens_per_forward"] for r in recs) / 4)
