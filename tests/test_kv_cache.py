"""The block KV cache (entrgi_core.kv_cache): refreshed every step it is exactly the uncached
sampler; its mechanics on BERT and a Dream-like model; models that cannot cache refuse."""
import pytest
import torch

from entrgi_core import DenoiseConfig, DreamLM, InputError, LLaDALM, generate
from entrgi_core.schedules import Threshold
from guidance import EntRGi
from tests.helpers import PROMPTS


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


def exploding_model_without_cache():
    from transformers import DistilBertConfig, DistilBertForMaskedLM

    from entrgi_core import MaskedLM
    from entrgi_core.tinyworld.tokenizers import build_dlm_tokenizer

    tok = build_dlm_tokenizer()
    bert = DistilBertForMaskedLM(DistilBertConfig(vocab_size=len(tok), dim=16, n_layers=1, n_heads=2, hidden_dim=16))
    return MaskedLM.from_model(bert, tok)


@pytest.mark.parametrize("mode", ["prefix", "dual"])
def test_a_cache_refreshed_every_step_is_exactly_the_uncached_sampler(world, mode):
    """(Under every schedule the package ships: tests/test_schedules.py.)"""
    dlm, rm = world
    over = dict(steps=16, max_new_tokens=16, num_samples=2, block_length=4)
    for guidance in (None, EntRGi(steps=1)):
        plain = generate(dlm, PROMPTS, reward=rm, guidance=guidance, config=DenoiseConfig(**over))
        cached = generate(dlm, PROMPTS, reward=rm, guidance=guidance,
                          config=DenoiseConfig(**over, cache=mode, cache_refresh=1))
        assert torch.equal(cached.tokens, plain.tokens) and cached.compute == plain.compute
        approx = generate(dlm, PROMPTS, reward=rm, guidance=guidance, config=DenoiseConfig(**over, cache=mode))
        assert sum(approx.compute["dlm_tokens"]) < sum(plain.compute["dlm_tokens"])
        assert (approx.tokens != dlm.mask_id).all()


@pytest.mark.parametrize("mode", ["prefix", "dual"])
def test_the_cache_mechanics_on_bert_and_a_dream_like_model(dlm, mode):
    tokens = cache_agrees_with_the_full_forward(dlm, mode, vocab=dlm.vocab_size)
    assert tokens.tolist() == [4 if mode == "dual" else 8] * 2           # the columns run
    dream = DreamLM.from_model(*dream_like_qwen2())
    cache_agrees_with_the_full_forward(dream, mode)                    # Dream: logits shifted by one


def test_a_dream_like_model_runs_cached_and_refreshed_every_step_is_exact(world):
    _, rm = world
    dream = DreamLM.from_model(*dream_like_qwen2())
    over = dict(steps=8, max_new_tokens=8, num_samples=2, block_length=4, schedule=Threshold(0.2))
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
