"""Reward adapters: what they register, and the caches that keep them cheap."""
import copy
import gc


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
