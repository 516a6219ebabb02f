"""Reward adapters (rewards/): scoring by text and by embeddings, vocabulary alignment, the
reward model's prefix cache, text rewards, composites, and the roles of select and judges."""
import copy
import gc
import json

import pytest
import torch

from entrgi_core import DenoiseConfig, generate
from entrgi_core.errors import InputError, ScoreError
from entrgi_core.tinyworld import OracleJudge, ValidityJudge
from guidance import SMC, EntRGi, Expectation, NoGuidance, StraightThrough
from rewards import CallableReward, HFRewardModel, Sum, TextReward, align_vocab
from tests.helpers import (
    PROMPTS,
    exploding_model,
    in_process_cli,
    make_step,
    read_jsonl,
    snapshot,
)

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
    (part,) = step.side.parts
    embeds, keep = step.canvas.inputs(part.vocab, torch.zeros(0, rm.embedding_table.shape[1]),
                                      torch.zeros(0, dlm.vocab_size), step.stop_ids)
    assert keep.sum(1).tolist() == [7, 10, 4]                         # split words take two RM positions
    with torch.no_grad():
        by_embeds = rm.score_embeds(part.context, embeds, keep)
        read = step.read(torch.zeros(0, dlm.vocab_size), hard=none).rewards     # the strategies' reading: the same
    torch.testing.assert_close(read, by_embeds)
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
    (part,) = step.side.parts
    embeds, keep = step.canvas.inputs(part.vocab, relaxed, phi, step.stop_ids)
    assert embeds.shape[1] == 6 and keep.sum() == 6                   # it is over ##priced | two slots
    torch.testing.assert_close(embeds[0, 4:], relaxed)
    phi[1, dlm.eos_id] = 5.0                                          # the second masked slot reads as EOS
    assert step.canvas.inputs(part.vocab, relaxed, phi, step.stop_ids)[1].sum() == 5


def test_guided_sampling_runs_with_split_tokens(world):
    dlm, rm = world
    res = generate(dlm, ["write a review of the hotel"], reward=rm, guidance=StraightThrough(steps=1),
                   config=DenoiseConfig(steps=4, max_new_tokens=8, num_samples=2))
    assert res.rewards.shape == (1, 2) and torch.isfinite(res.rewards).all()


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
        reading = step.read(phi, hard=hard)
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


@pytest.mark.slow
def test_cli_judges_and_select_write_every_record_and_the_summary(cli_config, tmp_path):
    out = tmp_path / "out"
    judges = json.dumps([{"class_path": "entrgi_core.tinyworld.OracleJudge"}])
    code, err = in_process_cli("predict", "--config", str(cli_config), "--judges", judges,
                               "--select", "rewards.TextReward", "--select.fn", "tests.test_rewards:length")
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
                                   "--select", "rewards.TextReward", "--select.fn", f"tests.test_rewards:{fn}")
        lines = [ln for ln in err.splitlines() if ln.startswith("entrgi: error")]
        assert code == 2 and len(lines) == 1 and "prompt id(s) ['p" in lines[0] and "Traceback" not in err, err
        assert snapshot(out) == before, fn


def test_reward_model_registers_each_submodule_once(rm):
    keys = list(rm.state_dict())
    assert len(keys) == len(set(keys)) == len(dict(rm.model.named_parameters()))
    assert {name for name, _ in rm.named_children()} == {"model"}


def test_alignment_cache_follows_the_tokenizer_object(rm, dlm):
    a = rm.aligned(dlm.tokenizer, dlm.vocab_size)
    assert rm.aligned(dlm.tokenizer, dlm.vocab_size) is a
    other = copy.deepcopy(dlm.tokenizer)
    assert rm.aligned(other, dlm.vocab_size) is not a                 # never confused by a reused id()
    del other
    gc.collect()
    assert len(rm._aligned) == 1                                      # a freed tokenizer's entry is gone


def test_prompt_cache_is_bounded(rm, monkeypatch):
    monkeypatch.setattr(type(rm), "CACHE_SIZE", 5)
    for i in range(12):
        rm.template_length(f"prompt number {i}")
    assert len(rm._cache) == 5 and "prompt number 11" in rm._cache


# ----------------------------------------------------------------------------- every classifier by its own head

def pair_tokenizer(cls_token: str, sep_token: str, *, double_sep: bool = False, pad: str = "[PAD]"):
    """A WordPiece tokenizer over the tiny world's words whose pair rule is BERT's
    (``[CLS] A [SEP] B [SEP]``, types 0 / 1) or, with ``double_sep``, RoBERTa's
    (``<s> A </s></s> B </s>``, types 0)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    from entrgi_core.tinyworld.grammar import words

    specials = [pad, "[UNK]", cls_token, sep_token, "[MASK]"]
    vocab = {t: i for i, t in enumerate(specials + sorted(set(words()) | {"a", "yes", "was", "good", "?", ","}))}
    tk = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
    tk.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    ids = {t: vocab[t] for t in (cls_token, sep_token)}
    if double_sep:
        tk.post_processor = processors.TemplateProcessing(
            single=f"{cls_token} $A {sep_token}", pair=f"{cls_token} $A {sep_token} {sep_token} $B {sep_token}",
            special_tokens=list(ids.items()))
    else:
        tk.post_processor = processors.TemplateProcessing(
            single=f"{cls_token} $A {sep_token}", pair=f"{cls_token} $A {sep_token} $B:1 {sep_token}:1",
            special_tokens=list(ids.items()))
    names = ["input_ids", "attention_mask"] + ([] if double_sep else ["token_type_ids"])   # as BERT's tokenizer gives
    return PreTrainedTokenizerFast(tokenizer_object=tk, pad_token=pad, unk_token="[UNK]", cls_token=cls_token,
                                   sep_token=sep_token, mask_token="[MASK]", model_input_names=names)


def tiny_classifier(kind: str):
    """A random sequence classifier of each architecture family, and its tokenizer."""
    import transformers as tf

    from entrgi_core.tinyworld.tokenizers import build_rm_tokenizer

    torch.manual_seed(0)
    small = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, num_labels=1)
    if kind == "bert":
        tok = pair_tokenizer("[CLS]", "[SEP]")
        return tf.BertForSequenceClassification(tf.BertConfig(vocab_size=len(tok), **small)), tok
    if kind == "roberta":
        tok = pair_tokenizer("<s>", "</s>", double_sep=True, pad="<pad>")
        cfg = tf.RobertaConfig(vocab_size=len(tok), pad_token_id=0, max_position_embeddings=130, type_vocab_size=1,
                               **small)
        return tf.RobertaForSequenceClassification(cfg), tok
    if kind == "deberta-v2":
        tok = pair_tokenizer("[CLS]", "[SEP]")
        cfg = tf.DebertaV2Config(vocab_size=len(tok), relative_attention=True, position_biased_input=False,
                                 pos_att_type=["p2c", "c2p"], max_relative_positions=64, type_vocab_size=2, **small)
        return tf.DebertaV2ForSequenceClassification(cfg), tok
    tok = build_rm_tokenizer()                                          # decoders: a chat template
    decoder = dict(vocab_size=len(tok), num_key_value_heads=1, head_dim=16, pad_token_id=tok.pad_token_id, **small)
    if kind == "qwen3":
        return tf.Qwen3ForSequenceClassification(tf.Qwen3Config(**decoder)), tok
    return tf.LlamaForSequenceClassification(tf.LlamaConfig(**decoder)), tok


def own_forward(model, tok, prompt: str, response: str) -> float:
    """What the model itself says of (prompt, response), through its tokenizer."""
    if tok.chat_template:
        conversation = [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}]
        inputs = tok.apply_chat_template(conversation, tokenize=True, return_dict=True, return_tensors="pt")
    else:
        inputs = tok(prompt, response, return_tensors="pt")
    with torch.no_grad():
        return float(model(**{k: v for k, v in inputs.items() if k != "token_type_ids" or tok.chat_template is None})
                     .logits[0, 0])


@pytest.mark.parametrize("kind", ["bert", "roberta", "deberta-v2", "qwen3", "llama"])
def test_every_classifier_is_scored_by_its_own_head_and_pooling(kind):
    model, tok = tiny_classifier(kind)
    reward = HFRewardModel.from_model(model, tok)                      # the load-time agreement check passes
    prompts = ["write a review of the hotel", "write a review of the zoo", "was it good ?"]
    responses = ["the hotel was great", "the staff was unfriendly but the food was good , yes", "yes"]
    own = torch.tensor([own_forward(model, tok, p, r) for p, r in zip(prompts, responses)])
    assert own.std() > 0                                              # the rows really differ
    torch.testing.assert_close(reward.score_text(prompts, responses), own, atol=1e-5, rtol=1e-5)
    ids = [tok(r, add_special_tokens=False)["input_ids"] for r in responses]
    width = max(len(i) for i in ids)
    keep = torch.tensor([[j < len(i) for j in range(width)] for i in ids])
    padded = torch.tensor([i + [0] * (width - len(i)) for i in ids])
    with torch.no_grad():                                             # one-hot inputs: the embeddings of the ids
        by_embeds = reward.score_embeds(reward.prepare(prompts), reward.embedding_table[padded], keep)
    torch.testing.assert_close(by_embeds, own, atol=1e-5, rtol=1e-5)
    assert torch.isfinite(reward.score_text(prompts[:1], [""])).all()  # nothing between the pair's parts


def test_a_model_whose_own_forward_disagrees_is_refused():
    from transformers import BertForSequenceClassification

    class ReadsItsIds(BertForSequenceClassification):
        """Scores token ids differently from their embeddings (an architecture entrgi cannot follow)."""

        def forward(self, input_ids=None, **kwargs):
            out = super().forward(input_ids=input_ids, **kwargs)
            if input_ids is not None:
                out.logits = out.logits + 1.0
            return out

    model, tok = tiny_classifier("bert")
    odd = ReadsItsIds(model.config)
    with pytest.raises(InputError, match="by its own forward but .* through entrgi's path"):
        HFRewardModel.from_model(odd, tok)


def test_the_compute_account_counts_what_a_forward_multiplies():
    model, tok = tiny_classifier("bert")
    reward = HFRewardModel.from_model(model, tok)
    looked_up = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Embedding))
    total = sum(p.numel() for p in model.parameters())
    assert reward.num_parameters == total - looked_up > 0            # input, position and type tables are lookups


def test_nothing_after_a_committed_stop_is_run_and_the_reading_is_the_same(world):
    from entrgi_core.reward_side import ResponseCanvas, pack_response

    dlm, rm = world
    words = dlm.tokenizer("the hotel was great", add_special_tokens=False)["input_ids"]
    length = 12
    tokens = torch.full((2, length), dlm.mask_id)
    tokens[0, :4] = torch.tensor(words)
    tokens[0, 4] = dlm.eos_id                                         # row 0 has ended at column 4
    tokens[1, :2] = torch.tensor(words[:2])
    tokens[1, 2] = dlm.eos_id                                         # row 1 at column 2
    rows, cols = (tokens == dlm.mask_id).nonzero(as_tuple=True)
    step = make_step(dlm, rm, tokens, rows, cols, prompts=PROMPTS[:2])
    (part,) = step.side.parts
    phi = torch.randn(rows.numel(), dlm.vocab_size, generator=torch.Generator().manual_seed(0))
    relaxed = torch.randn(rows.numel(), rm.embedding_table.shape[1])
    embeds, keep = step.canvas.inputs(part.vocab, relaxed, phi, step.stop_ids)
    assert embeds.shape[1] == 4                                       # the longest ended row, not 12 positions
    full = ResponseCanvas(tokens, rows, cols)
    full._packs[id(part.vocab)] = pack_response(part.vocab, tokens, rows, cols)   # the whole canvas, as before
    embeds_all, keep_all = full.inputs(part.vocab, relaxed, phi, step.stop_ids)
    assert embeds_all.shape[1] == 11 and torch.equal(keep.sum(1), keep_all.sum(1))   # 4 words + 7 slots
    with torch.no_grad():
        torch.testing.assert_close(rm.score_embeds(part.context, embeds, keep),
                                   rm.score_embeds(part.context, embeds_all, keep_all))
