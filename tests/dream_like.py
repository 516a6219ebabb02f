"""A stand-in for Dream's remote-code ``diffusion_generate`` with its calling convention (the
canvas padded with the mask id; each step one forward whose logits (B, S, V) are aligned to the
canvas positions (Dream shifts its own right by one first; this masked LM needs no shift), then
``generation_logits_hook_func(step, x, logits)``; the masked positions' tokens sampled from what
the hook returns; the most confident committed on Dream's ``1 - s / t`` schedule), running on the
tiny world's masked LM. Written for the tests from Dream's documented behaviour; no Dream code."""
from __future__ import annotations

from types import SimpleNamespace

import torch
from torch import nn


class DreamLike(nn.Module):
    def __init__(self, masked_lm: nn.Module, mask_token_id: int):
        super().__init__()
        self.model = masked_lm.eval()
        self.mask_token_id = mask_token_id

    @property
    def device(self):
        return next(self.parameters()).device

    @torch.no_grad()
    def diffusion_generate(self, input_ids, attention_mask=None, max_new_tokens=16, steps=16, temperature=1.0,
                           top_p=1.0, alg="entropy", eps=1e-3, generation_logits_hook_func=None,
                           return_dict_in_generate=False, output_history=False, generator=None):
        hook = generation_logits_hook_func or (lambda step, x, logits: logits)
        b, p = input_ids.shape
        x = torch.nn.functional.pad(input_ids, (0, max_new_tokens), value=self.mask_token_id)
        attn = torch.ones_like(x) if attention_mask is None else \
            torch.nn.functional.pad(attention_mask, (0, max_new_tokens), value=1)
        pos = (attn.cumsum(1) - 1).clamp(min=0)
        timesteps = torch.linspace(1, eps, steps + 1)
        for i in range(steps):
            mask_index = x == self.mask_token_id
            if not mask_index.any():
                break
            logits = self.model(input_ids=x, attention_mask=attn, position_ids=pos,
                                token_type_ids=torch.zeros_like(x)).logits
            logits = hook(i, x, logits)
            probs = torch.softmax(logits[mask_index].float() / temperature, dim=-1)
            x0 = torch.multinomial(probs, 1, generator=generator).squeeze(1)
            conf = probs.gather(1, x0[:, None]).squeeze(1) if alg != "entropy" else (probs * probs.clamp_min(1e-12).log()).sum(-1)
            full = torch.full(x.shape, -torch.inf)
            full[mask_index] = conf
            candidate = torch.full_like(x, self.mask_token_id)
            candidate[mask_index] = x0
            t, s = timesteps[i], timesteps[i + 1]
            per_row = mask_index.sum(1)
            n = per_row if i == steps - 1 else (per_row.float() * (1 - s / t)).long()
            for row in range(b):
                if n[row] > 0:
                    top = full[row].topk(int(n[row])).indices
                    x[row, top] = candidate[row, top]
        return SimpleNamespace(sequences=x, history=None) if return_dict_in_generate else x
