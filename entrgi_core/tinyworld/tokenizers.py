"""The tiny world's two tokenizers, built with the `tokenizers` library.

dLLM: word level, with [MASK] and the chat template "user : ... assistant :".
RM: WordPiece with another id order and its own template "<user> ... </s> <assistant> ... </s>";
it lacks a few words and splits a few others ("unreliable" -> "un ##reliable"), so vocabulary
alignment has real work to do.
"""
from __future__ import annotations

from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from entrgi_core.tinyworld.grammar import words

DLM_SPECIALS = ["[PAD]", "[UNK]", "[MASK]", "[EOS]"]
RM_SPECIALS = ["[pad]", "[unk]", "</s>", "<user>", "<assistant>"]
RM_LACKS = ["sloppy", "greasy"]
RM_SPLITS = {"unreliable": ("un", "##reliable"), "uncomfortable": ("un", "##comfortable"),
             "unfriendly": ("un", "##friendly"), "overpriced": ("over", "##priced")}

DLM_TEMPLATE = (
    "{% for m in messages %}{% if m['role'] == 'user' %}user : {{ m['content'] }} {% endif %}{% endfor %}"
    "{% if add_generation_prompt %}assistant :{% endif %}"
)
RM_TEMPLATE = "{% for m in messages %}<{{ m['role'] }}> {{ m['content'] }} </s> {% endfor %}"


def build_dlm_tokenizer() -> PreTrainedTokenizerFast:
    vocab = {t: i for i, t in enumerate(DLM_SPECIALS + ["user", ":", "assistant"] + words())}
    tk = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tk.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="[PAD]", unk_token="[UNK]", mask_token="[MASK]",
                                  eos_token="[EOS]", clean_up_tokenization_spaces=False)
    tok.chat_template = DLM_TEMPLATE
    return tok


def build_rm_tokenizer() -> PreTrainedTokenizerFast:
    ws = [w for w in words() if w not in RM_LACKS and w not in RM_SPLITS]
    pieces = sorted({p for parts in RM_SPLITS.values() for p in parts})
    ordinary = sorted(ws + pieces, reverse=True)             # a different id order from the dLLM's
    vocab = {t: i for i, t in enumerate(RM_SPECIALS + ordinary)}
    tk = Tokenizer(models.WordPiece(vocab, unk_token="[unk]", max_input_chars_per_word=64))
    tk.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tk.decoder = decoders.WordPiece(prefix="##")
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="[pad]", unk_token="[unk]", eos_token="</s>",
                                  additional_special_tokens=["<user>", "<assistant>"],
                                  clean_up_tokenization_spaces=False)
    tok.chat_template = RM_TEMPLATE
    return tok
