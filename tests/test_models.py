"""Model adapters (entrgi_core.models, hub): Dream's shifted logits, mask tokens, remote code,
and where a model comes from."""
import pytest
import torch

from entrgi_core import DreamLM, LLaDALM, MaskedLM


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


def test_tokenizer_without_mask_token(dlm):
    from entrgi_core.tinyworld.tokenizers import build_rm_tokenizer
    with pytest.raises(ValueError, match="has no mask token"):
        MaskedLM.from_model(dlm.model, build_rm_tokenizer())


def test_remote_code_needs_the_flag(tmp_path):
    import json
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "my_custom_dlm", "auto_map": {
        "AutoConfig": "configuration_x.XConfig", "AutoModel": "modeling_x.XModel"}}))
    with pytest.raises(ValueError, match="trust_remote_code=True"):
        DreamLM.from_pretrained(str(tmp_path))


def test_model_sources_are_classified_without_the_network(monkeypatch, tmp_path):
    from entrgi_core.hub import check_source
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    check_source(str(tmp_path), "x")                                   # a local directory
    for name in ("gpt2", "org/model"):                                 # hub names, legacy and org/name
        with pytest.raises(FileNotFoundError, match="not in the local cache, and offline mode is set"):
            check_source(name, "x")
    for path in ("./model", "/abs/model", "a/b/c", str(tmp_path / "f.txt")):
        with pytest.raises(FileNotFoundError, match="does not exist"):
            check_source(path, "x")
