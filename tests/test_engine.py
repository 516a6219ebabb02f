"""The guided denoising engine: exactness invariants (DESIGN.md §4) and bad input."""
import pytest
import torch

from entrgi_core import DenoiseConfig, DreamLM, LLaDALM, MaskedLM, NonFiniteLogitsError, generate
from entrgi_core.models import DiffusionLM
from guidance import STRATEGIES, EntRGi, GuidanceOutput, NoGuidance
from rewards import HFRewardModel, align_vocab
from tests.conftest import PROMPTS, make_step, requires_cuda, small_config
from tests.tiny import save_tiny_rm

SMALL = small_config()


def test_dream_shift_and_llada_no_shift(dlm):
    ids = torch.tensor([[5, 9, 2, 2, 2]])
    attn = torch.ones_like(ids, dtype=torch.bool)
    pos = torch.arange(5)[None]
    raw = dlm.model(input_ids=ids, attention_mask=attn.long(), position_ids=pos,
                    token_type_ids=torch.zeros_like(ids)).logits          # (1, 5, V) by hand
    dream = DreamLM.from_model(dlm.model, dlm.tokenizer)
    llada = LLaDALM.from_model(dlm.model, dlm.tokenizer)
    torch.testing.assert_close(dream.logits(ids, attn, pos)[:, 0], raw[:, 0])
    torch.testing.assert_close(dream.logits(ids, attn, pos)[:, 1:], raw[:, :-1])   # position i reads i-1
    torch.testing.assert_close(llada.logits(ids, attn, pos), raw)
    torch.testing.assert_close(dlm.logits(ids, attn, pos), raw)


def test_guidance_changes_samples_and_raises_reward(dlm, rm):
    cfg = DenoiseConfig(steps=8, max_new_tokens=8, num_samples=4, seed=0)
    base = generate(dlm, PROMPTS, reward=rm, guidance=NoGuidance(), config=cfg)
    guided = generate(dlm, PROMPTS, reward=rm, guidance=EntRGi(steps=3, lr=1.0), config=cfg)
    assert not torch.equal(base.tokens, guided.tokens)
    assert guided.avg_reward.mean() > base.avg_reward.mean()


def test_one_hot_score_embeds_equals_score_text(dlm, rm):
    tok = dlm.tokenizer
    responses = ["the hotel was very great .", "it seemed bad [EOS] the staff was nice .", "the food is not good"]
    prompts = PROMPTS
    length = 12
    ids = torch.full((3, length), dlm.eos_id)
    for i, text in enumerate(responses):
        row = tok(text, add_special_tokens=False)["input_ids"]
        ids[i, : len(row)] = torch.tensor(row)
    table = rm.aligned_table(tok, dlm.vocab_size)                           # (V, D)
    stop = torch.isin(ids, torch.tensor(dlm.stop_ids))
    first = torch.where(stop.any(1), stop.int().argmax(1), torch.full((3,), length))
    keep = torch.arange(length)[None] < first[:, None]
    # w = 1 with hard ids equal to the response: the relaxation returns exactly E[ids]
    from entrgi_core.ops import relax_embeddings
    logits = torch.randn(3 * length, dlm.vocab_size)
    embeds = relax_embeddings(logits, table, ids.flatten(), gate="ste").embeds.view(3, length, -1)
    with torch.no_grad():
        by_embeds = rm.score_embeds(rm.prepare(prompts), embeds, keep)
    texts = ["the hotel was very great .", "it seemed bad", "the food is not good"]
    by_text = rm.score_text(prompts, texts)
    torch.testing.assert_close(by_embeds, by_text, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("cls", [s for s in STRATEGIES if s is not NoGuidance])
def test_strategy_contract_refine_ascends_reward(cls, tmp_path, dlm):
    """Shared contract over every guided strategy: refine raises the relaxed input's reward on
    average over random tiny reward models."""
    gains = []
    for seed in range(3):
        rm = HFRewardModel.from_pretrained(str(save_tiny_rm(tmp_path / f"rm{seed}", seed=seed)))
        g = cls(steps=3, lr=0.5)
        r, length = 4, 6
        tokens = torch.full((r, length), dlm.mask_id)
        rows, cols = (tokens == dlm.mask_id).nonzero(as_tuple=True)
        phi = torch.randn(rows.numel(), dlm.vocab_size, generator=torch.Generator().manual_seed(seed))
        step = make_step(dlm, rm, tokens, rows, cols)
        with torch.no_grad():
            before = g.relaxed_reward(phi, step, 0)[0].mean()
            out = g.refine(phi, step)
            after = g.relaxed_reward(out.logits, step, 0)[0].mean()
        assert isinstance(out, GuidanceOutput) and out.weight.shape == (rows.numel(),)
        assert out.reward_before.shape == (r,) and out.reward_after is None     # diagnose is off
        gains.append(float(after - before))
    assert sum(gains) / len(gains) > 0, gains
    assert NoGuidance().refine(phi, step).logits is phi


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


@pytest.mark.parametrize("cfg", [
    DenoiseConfig(steps=8, max_new_tokens=8, num_samples=2, alg="origin"),
    DenoiseConfig(steps=8, max_new_tokens=8, num_samples=2, alg="maskgit_plus", top_k=5),
    DenoiseConfig(steps=8, max_new_tokens=8, num_samples=2, alg="topk_margin", top_p=1.0),
    DenoiseConfig(steps=8, max_new_tokens=8, num_samples=2, alg="entropy", alg_temp=0.5),
    DenoiseConfig(steps=8, max_new_tokens=8, num_samples=2, block_length=4),
    DenoiseConfig(steps=4, max_new_tokens=8, num_samples=2, temperature=0.0),
    DenoiseConfig(steps=4, max_new_tokens=8, num_samples=2, block_length=4, schedule="llada", alg="low_confidence"),
    DenoiseConfig(steps=5, max_new_tokens=8, num_samples=2, schedule="llada", alg="random"),
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


def test_seed_changes_samples(dlm):
    a = generate(dlm, PROMPTS, config=DenoiseConfig(steps=4, max_new_tokens=8, num_samples=2, seed=0))
    b = generate(dlm, PROMPTS, config=DenoiseConfig(steps=4, max_new_tokens=8, num_samples=2, seed=1))
    assert not torch.equal(a.tokens, b.tokens)


# ----------------------------------------------------------------------------- bad input

@pytest.mark.parametrize("kwargs,message", [
    ({"steps": 0}, "steps must be an integer >= 1"),
    ({"max_new_tokens": 0}, "max_new_tokens must be an integer >= 1"),
    ({"num_samples": 0}, "num_samples must be an integer >= 1"),
    ({"temperature": -0.1}, "temperature must be >= 0"),
    ({"schedule": "cosine"}, "schedule must be None"),
    ({"alg": "origin", "schedule": "llada"}, "needs schedule='dream'"),
    ({"top_p": 0.0}, "top_p must lie in (0, 1]"),
    ({"top_p": 1.5}, "top_p must lie in (0, 1]"),
    ({"alg": "confident"}, "alg must be one of"),
    ({"max_new_tokens": 10, "block_length": 4}, "does not divide max_new_tokens"),
])
def test_bad_config(kwargs, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[").replace("]", r"\]")):
        DenoiseConfig(**kwargs)


@pytest.mark.parametrize("kwargs,message", [
    ({"steps": -1}, "steps \\(M\\) must be an integer >= 0"),
    ({"lr": -0.5}, "lr \\(eta\\) must be a finite number >= 0"),
    ({"temperature": 0.0}, "temperature must be None \\(the sampler's\\) or > 0"),
    ({"top_p": 0.0}, "top_p must be None \\(the sampler's\\) or lie in"),
    ({"optimizer": "lbfgs"}, "optimizer must be"),
])
def test_bad_guidance(kwargs, message):
    with pytest.raises(ValueError, match=message):
        EntRGi(**kwargs)


def test_bad_prompts_fail_before_model_compute(rm):
    class Exploding(DiffusionLM):
        def forward_logits(self, *a):
            raise AssertionError("model ran")
    from entrgi_core.tinyworld.tokenizers import build_dlm_tokenizer
    from transformers import BertConfig, BertForMaskedLM as B
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


def test_tokenizer_without_mask_token(dlm):
    from entrgi_core.tinyworld.tokenizers import build_rm_tokenizer
    with pytest.raises(ValueError, match="has no mask token"):
        MaskedLM.from_model(dlm.model, build_rm_tokenizer())


def test_low_vocabulary_coverage_names_both_tokenizers(dlm):
    from transformers import AutoTokenizer  # noqa: F401
    from entrgi_core.tinyworld.tokenizers import build_rm_tokenizer
    rm_tok = build_rm_tokenizer()
    rm_tok.name_or_path = "tiny-rm"
    dlm.tokenizer.name_or_path = "tiny-dlm"
    al = align_vocab(dlm.tokenizer, rm_tok)
    assert 0.95 <= al.coverage < 1 and "sloppy" in al.unmapped and "overpriced" in al.split_tokens
    assert (al.exact, al.split, al.missing) == (179, 4, 5)
    summary, report = al.summary(), al.report()                       # the words, not only their counts
    assert "missing [" in summary and "'sloppy'" in summary and "split [" in summary and "'overpriced'" in summary
    assert sorted(report["missing_words"]) == sorted(al.unmapped) and "overpriced" in report["split_words"]
    with pytest.raises(ValueError, match=r"only 97\.\d% .*'tiny-dlm'.*'tiny-rm'.*4 split, 5 missing.*threshold 99%"):
        align_vocab(dlm.tokenizer, rm_tok, min_coverage=0.99)
    words = align_vocab(dlm.tokenizer, rm_tok).index
    great_d = dlm.tokenizer.convert_tokens_to_ids("great")
    assert words[great_d] == rm_tok.convert_tokens_to_ids("great")
    assert words[dlm.eos_id] == rm_tok.eos_token_id


def test_remote_code_needs_the_flag(tmp_path):
    import json
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "my_custom_dlm", "auto_map": {
        "AutoConfig": "configuration_x.XConfig", "AutoModel": "modeling_x.XModel"}}))
    with pytest.raises(ValueError, match="trust_remote_code=True"):
        DreamLM.from_pretrained(str(tmp_path))


@requires_cuda
def test_no_host_sync_inside_the_inner_steps(tiny_dlm_path, tiny_rm_path):
    dlm = MaskedLM.from_pretrained(str(tiny_dlm_path), device="cuda")
    rm = HFRewardModel.from_pretrained(str(tiny_rm_path), device="cuda")
    tokens = torch.full((4, 6), dlm.mask_id, device="cuda")
    rows, cols = (tokens == dlm.mask_id).nonzero(as_tuple=True)
    step = make_step(dlm, rm, tokens, rows, cols)
    step.packed                                          # built once per denoising step (one sync), outside
    phi = torch.randn(rows.numel(), dlm.vocab_size, device="cuda")
    g = EntRGi(steps=3)
    g.refine(phi, step)                                  # warm-up (lazy loading, allocator)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        g.refine(phi, step)
    finally:
        torch.cuda.set_sync_debug_mode("default")
