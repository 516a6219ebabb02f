"""What ends a response: the one stop rule of every model adapter and every hook.

A response ends at the first of: the tokenizer's EOS (its SEP when it has no EOS) and pad token,
the checkpoint's ``generation_config.eos_token_id`` (one id or a list), and the special tokens the
chat template writes right after an assistant turn (``<|im_end|>``, ``<|eot_id|>``,
``<end_of_turn>``, ...), read by rendering a conversation, not from a list of names. The mask token
never ends a response (a masked position is not an answer yet).
"""
from __future__ import annotations

_SENTINEL = "\u2063ENTRGI_TURN\u2063"


def turn_end_ids(tokenizer) -> set[int]:
    """Special tokens the chat template writes after an assistant message (empty without one)."""
    if not getattr(tokenizer, "chat_template", None):
        return set()
    import jinja2

    try:
        text = tokenizer.apply_chat_template([{"role": "user", "content": "x"},
                                              {"role": "assistant", "content": _SENTINEL}], tokenize=False)
    except (jinja2.TemplateError, ValueError, TypeError):   # a template that refuses a plain two-turn chat
        return set()
    if not isinstance(text, str) or _SENTINEL not in text:
        return set()
    after = text.split(_SENTINEL, 1)[1]
    special = set(tokenizer.all_special_ids)
    special |= {int(i) for i, t in getattr(tokenizer, "added_tokens_decoder", {}).items() if t.special}
    return {int(i) for i in tokenizer(after, add_special_tokens=False)["input_ids"] if i in special}


def stop_ids(tokenizer, generation_config=None, *, mask_id: int | None = None) -> tuple[int, ...]:
    """The ids that end a response (sorted), by the rule in the module docstring."""
    ids: set[int] = set()
    eos = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else getattr(tokenizer, "sep_token_id", None)
    for t in (eos, tokenizer.pad_token_id):
        if t is not None:
            ids.add(int(t))
    extra = getattr(generation_config, "eos_token_id", None)
    if extra is not None:
        ids.update(int(t) for t in (extra if isinstance(extra, (list, tuple)) else [extra]))
    ids |= turn_end_ids(tokenizer)
    ids.discard(mask_id)
    return tuple(sorted(ids))


def first_stop(ids: list[int], stops) -> int:
    """Index of the first stop id in ``ids`` (its length when there is none)."""
    stops = set(stops)
    return next((i for i, t in enumerate(ids) if t in stops), len(ids))
