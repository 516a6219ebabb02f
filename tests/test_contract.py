"""The sampler-strategy contract (issue 8): fresh imports, one source of truth for sampling
settings, typed per-prompt diagnostics, alignment only where needed, schedules as objects with
LLaDA's own, position limits, and split tokens entering the reward model as its own tokens."""
import pytest
import torch

from entrgi_core import DenoiseConfig, LLaDALM, generate
from entrgi_core.contract import Sampling
from entrgi_core.schedules import DreamSchedule, LLaDASchedule
from guidance import EntRGi, NoGuidance, StraightThrough
from rewards import CallableReward, HFRewardModel
from tests.conftest import PROMPTS, exploding_model, make_step



# ----------------------------------------------------------------------------- 2. one source of truth

class Recorder(EntRGi):
    """EntRGi that records the sampling settings it used."""

    def refine(self, phi, step):
        type(self).seen.append((self.sampling(step.temperature, step.top_p), step.top_k))
        return super().refine(phi, step)


def test_guidance_uses_the_samplers_temperature_top_p_and_top_k(dlm, rm):
    Recorder.seen = []
    cfg = DenoiseConfig(steps=2, max_new_tokens=4, num_samples=1, temperature=1.0, top_p=0.8, top_k=7)
    generate(dlm, PROMPTS[:1], reward=rm, guidance=Recorder(steps=1), config=cfg)
    assert Recorder.seen == [((1.0, 0.8), 7)] * 2
    Recorder.seen = []
    generate(dlm, PROMPTS[:1], reward=rm, guidance=Recorder(steps=1, temperature=0.5), config=cfg)
    assert Recorder.seen == [((0.5, 0.8), 7)] * 2            # overridden only where told


def test_greedy_sampler_needs_an_explicit_guidance_temperature(rm):
    model = exploding_model()
    with pytest.raises(ValueError, match=r"greedy \(temperature 0\).*EntRGi\(temperature=0.7\)"):
        generate(model, ["x"], reward=rm, guidance=EntRGi(), config=DenoiseConfig(temperature=0.0))


# ----------------------------------------------------------------------------- 3. strategies and diagnostics

def test_no_guidance_carries_no_gradient_loop():
    for knob in ("steps", "lr", "optimizer", "temperature", "top_p", "entropy_temperature", "start", "stop"):
        assert not hasattr(NoGuidance(), knob)
    with pytest.raises(TypeError):
        NoGuidance(steps=3)
    assert not NoGuidance().needs_reward


class CountingRM(HFRewardModel):
    calls = 0

    def score_embeds(self, ctx, embeds, keep):
        type(self).calls += 1
        return super().score_embeds(ctx, embeds, keep)


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


# ----------------------------------------------------------------------------- 4. Best-of-N needs no alignment

def test_best_of_n_needs_no_vocabulary_alignment(dlm):
    from entrgi_core.tinyworld.tokenizers import build_rm_tokenizer
    tok = build_rm_tokenizer()
    table = torch.randn(len(tok), 8)
    poor = CallableReward(lambda e, keep: (e.sum(-1) * keep).sum(1), table, tok, min_coverage=0.999)
    cfg = DenoiseConfig(steps=2, max_new_tokens=4, num_samples=2)
    for strategy in (None, NoGuidance()):
        res = generate(dlm, PROMPTS[:2], reward=poor, guidance=strategy, config=cfg)
        assert res.rewards.shape == (2, 2)
    with pytest.raises(ValueError, match="vocabulary alignment: only"):
        generate(dlm, PROMPTS[:2], reward=poor, guidance=EntRGi(), config=cfg)


# ----------------------------------------------------------------------------- 5. schedules

@pytest.mark.parametrize("n,steps", [(8, 8), (8, 3), (5, 4), (16, 5), (2, 6), (0, 3)])
def test_llada_schedule_counts(n, steps):
    sched = LLaDASchedule()
    start = torch.tensor([n])
    counts = [int(sched.counts(start, start, i, steps)) for i in range(steps)]
    assert counts == [n // steps + (1 if i < n % steps else 0) for i in range(steps)] and sum(counts) == n


def test_dream_schedule_shares():
    sched = DreamSchedule()
    ts = torch.linspace(1, 1e-3, 5, dtype=torch.float64)
    assert [sched.share(i, 4) for i in range(4)] == [1 - (ts[i + 1] / ts[i]).item() for i in range(3)] + [1.0]


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


def test_llada_schedule_matches_lladas_greedy_sampler(dlm):
    llada = LLaDALM.from_model(dlm.model, dlm.tokenizer)
    assert llada.default_schedule == "llada"
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


# ----------------------------------------------------------------------------- 6. top_k reaches the hard sample

def test_top_k_reaches_the_hard_sample(dlm, rm):
    tokens = torch.full((3, 5), dlm.mask_id)
    rows, cols = (tokens == dlm.mask_id).nonzero(as_tuple=True)
    phi = torch.randn(rows.numel(), dlm.vocab_size, generator=torch.Generator().manual_seed(0))
    step = make_step(dlm, rm, tokens, rows, cols, sampling=Sampling(0.7, 0.95, 1))
    for inner in range(3):
        assert torch.equal(step.hard_tokens(phi, inner, temperature=5.0, top_p=1.0), phi.argmax(-1))
    free = make_step(dlm, rm, tokens, rows, cols)
    assert not torch.equal(free.hard_tokens(phi, 0, temperature=5.0, top_p=1.0), phi.argmax(-1))


# ----------------------------------------------------------------------------- 8. position limits

def test_prompts_over_the_position_limit_are_refused_before_model_compute(rm):
    long = " ".join(["the hotel was great"] * 750)                   # 3,000 words
    with pytest.raises(ValueError, match=r"diffusion LM allows 64 positions.*ids 'long'.*nothing was run"):
        generate(exploding_model(), ["fine", long], reward=rm, guidance=EntRGi(), prompt_ids=["ok", "long"],
                 config=DenoiseConfig(steps=2, max_new_tokens=8))
    with pytest.raises(ValueError, match=r"reward model allows 256 positions.*ids 'ok'"):
        generate(exploding_model(), ["fine"], reward=rm, guidance=EntRGi(), prompt_ids=["ok"],
                 config=DenoiseConfig(steps=2, max_new_tokens=130))


# ----------------------------------------------------------------------------- 10. non-string prompts

def test_a_non_string_prompt_is_named_as_such(rm):
    with pytest.raises(ValueError, match=r"prompt 1 is not a string \(int: 42\)"):
        generate(exploding_model(), ["ok", 42], reward=rm, config=DenoiseConfig(steps=2, max_new_tokens=4))


# ----------------------------------------------------------------------------- 11. split tokens

def test_one_hot_embeddings_equal_text_for_split_and_missing_words(world):
    dlm, rm = world
    texts = ["it is overpriced and unreliable", "the staff was unfriendly but the room was sloppy",
             "the hotel was great"]
    length = 10
    tokens = torch.full((3, length), dlm.eos_id)
    for i, text in enumerate(texts):
        row = dlm.tokenizer(text, add_special_tokens=False)["input_ids"]
        tokens[i, : len(row)] = torch.tensor(row)
    none = torch.zeros(0, dtype=torch.long)
    step = make_step(dlm, rm, tokens, none, none, prompts=PROMPTS)
    embeds, keep = step.reward_inputs(torch.zeros(0, rm.embedding_table.shape[1]), torch.zeros(0, dlm.vocab_size))
    assert keep.sum(1).tolist() == [7, 10, 4]                         # split words take two RM positions
    with torch.no_grad():
        by_embeds = rm.score_embeds(step.context, embeds, keep)
    by_text = rm.score_text(PROMPTS, texts)
    torch.testing.assert_close(by_embeds, by_text, atol=1e-5, rtol=1e-5)


def test_relaxed_split_token_uses_the_mean_of_its_pieces(world):
    dlm, rm = world
    vocab = rm.aligned(dlm.tokenizer, dlm.vocab_size)
    v = dlm.tokenizer.convert_tokens_to_ids("overpriced")
    over, priced = rm.tokenizer.convert_tokens_to_ids(["over", "##priced"])
    torch.testing.assert_close(vocab.table[v], rm.embedding_table[[over, priced]].mean(0).detach())
    assert vocab.counts[v] == 2 and vocab.counts[dlm.mask_id] == 0


def test_mixed_canvas_packs_committed_pieces_and_relaxed_slots(world):
    dlm, rm = world
    words = dlm.tokenizer("it is overpriced", add_special_tokens=False)["input_ids"]
    tokens = torch.tensor([words + [dlm.mask_id, dlm.mask_id]])       # (1, 5): 3 committed, 2 masked
    rows, cols = torch.tensor([0, 0]), torch.tensor([3, 4])
    step = make_step(dlm, rm, tokens, rows, cols, prompts=PROMPTS[:1])
    relaxed = torch.randn(2, rm.embedding_table.shape[1])
    phi = torch.zeros(2, dlm.vocab_size)
    phi[:, dlm.tokenizer.convert_tokens_to_ids("great")] = 1.0
    embeds, keep = step.reward_inputs(relaxed, phi)
    assert embeds.shape[1] == 6 and keep.sum() == 6                   # it is over ##priced | two slots
    torch.testing.assert_close(embeds[0, 4:], relaxed)
    phi[1, dlm.eos_id] = 5.0                                          # the second masked slot reads as EOS
    assert step.reward_inputs(relaxed, phi)[1].sum() == 5


def test_guided_sampling_runs_with_split_tokens(world):
    dlm, rm = world
    res = generate(dlm, ["write a review of the hotel"], reward=rm, guidance=StraightThrough(steps=1),
                   config=DenoiseConfig(steps=4, max_new_tokens=8, num_samples=2))
    assert res.rewards.shape == (1, 2) and torch.isfinite(res.rewards).all()


def test_origin_rule_needs_dream_shares_before_model_compute(dlm):
    class ExplodingLLaDA(LLaDALM):
        def forward_logits(self, *a):
            raise AssertionError("model ran")
    llada = ExplodingLLaDA.from_model(dlm.model, dlm.tokenizer)
    with pytest.raises(ValueError, match="alg='origin'.*needs schedule='dream', not 'llada'"):
        generate(llada, ["x"], config=DenoiseConfig(steps=2, max_new_tokens=4, alg="origin"))
