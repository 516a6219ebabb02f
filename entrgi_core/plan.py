"""The checks of a generation, with one owner.

``Plan.check(model, reward, guidance, config, select=, judges=)`` runs every check that depends
on the settings once, before any model compute: the reward is there when the strategy reads it,
and differentiable when the strategy differentiates it, the strategy can work with the sampler's
settings, the model can honour them (``model.check``), the commit schedule (the config's, else
the model's own) can work with them (``schedule.check``), the vocabulary alignment covers the
dLLM's tokens for every reward model guidance reads, and the selector and judges score text.
``plan.batch(prompts, ids)`` checks what depends on the prompts (strings, not empty, within both
models' position limits) and encodes them. ``generate`` does both; ``GuidedDenoiser`` checks its plan once on construction and its
data module's prompts once in ``setup``, so no check runs again per batch.
"""
from __future__ import annotations

from dataclasses import dataclass

from entrgi_core import checks
from entrgi_core.config import DenoiseConfig
from entrgi_core.errors import InputError


@dataclass(frozen=True)
class Plan:
    model: object                 # a DiffusionModel
    reward: object | None         # a RewardAdapter: guides (None: unguided and, without a selector, unscored)
    guidance: object | None       # a Guidance strategy (None: unguided)
    config: DenoiseConfig
    max_pieces: int = 1           # the most reward-model tokens one dLLM token takes (over the models guidance reads)
    select: object | None = None  # picks Top@1 (None: the reward)
    judges: tuple = ()            # score the final responses only (evaluation)
    schedule: object | None = None   # the commit schedule: the config's, else the model's own (None: own loop)

    @property
    def guided(self) -> bool:
        """Whether the strategy reads the reward during sampling."""
        return self.guidance is not None and self.guidance.needs_reward

    @property
    def selector(self):
        """What picks Top@1: ``select``, else the reward (None: no Top@1)."""
        return self.select if self.select is not None else self.reward

    @classmethod
    def check(cls, model, reward=None, guidance=None, config: DenoiseConfig | None = None, *, select=None,
              judges=None) -> "Plan":
        cfg = config if config is not None else DenoiseConfig()
        if not isinstance(cfg, DenoiseConfig):
            raise InputError(f"config must be a DenoiseConfig, got {type(cfg).__name__}")
        guided = guidance is not None and guidance.needs_reward
        if guided and reward is None:
            raise InputError(f"{type(guidance).__name__} needs a reward model (reward=None)")
        if guided and guidance.reads_embeddings and not reward.parts():
            raise InputError(f"{type(guidance).__name__} differentiates its reward, and {reward.name!r} scores text "
                             "only. Give it a differentiable reward adapter (e.g. rewards.HFRewardModel), or use the "
                             "text reward as select=..., in judges=[...], as Best-of-N's reward (no guidance) or in "
                             "SMC(intermediate='hard')")
        judges = check_scorers(select, judges)
        if guided:
            guidance.check(cfg.temperature, cfg.top_p)
        model.check(cfg, guidance)
        schedule = cfg.schedule if cfg.schedule is not None else getattr(model, "default_schedule", None)
        if schedule is not None:
            schedule.check(cfg)
        pieces = 1
        if guided and guidance.reads_embeddings:                       # the alignments' coverage checks, once
            pieces = max(term.aligned(model.tokenizer, model.vocab_size).max_pieces for _, term in reward.parts())
        return cls(model=model, reward=reward, guidance=guidance, config=cfg, max_pieces=pieces, select=select,
                   judges=judges, schedule=schedule)

    def batch(self, prompts, prompt_ids: list | None = None, *, check_lengths: bool = True,
              seeds: list[int] | None = None) -> "Batch":
        """The prompts checked and encoded; ``prompt_ids`` default to their positions; ``seeds`` (one per
        prompt, default ``config.seed`` for all) seed each prompt's draws with its id."""
        prompts = check_prompts(prompts)
        ids = list(range(len(prompts))) if prompt_ids is None else list(prompt_ids)
        if len(ids) != len(prompts):
            raise InputError(f"generate: {len(ids)} prompt ids for {len(prompts)} prompts")
        if seeds is None:
            seeds = [self.config.seed] * len(prompts)
        else:
            seeds = list(seeds)
            if len(seeds) != len(prompts):
                raise InputError(f"generate: {len(seeds)} seeds for {len(prompts)} prompts")
            for s in seeds:
                checks.integer(s, who="generate", name="each of seeds", minimum=0)
        encoded = self.model.encode_prompts(prompts)
        if check_lengths:
            self.check_lengths(prompts, ids, encoded)
        return Batch(prompts, ids, encoded, seeds)

    def check_lengths(self, prompts: list[str], ids: list, encoded: list[list[int]]) -> None:
        models = [term for _, term in self.reward.parts()] if self.reward is not None else [None]
        for term in models or [None]:
            check_prompt_lengths(self.model, encoded, ids, self.config.max_new_tokens, reward=term, prompts=prompts,
                                 max_pieces=self.max_pieces)


def check_scorers(select, judges) -> tuple:
    """The selector and the judges score text; judges have distinct names (records are keyed by them)."""
    judges = tuple(judges or ())
    for role, scorer in [("select", select)] + [("judge", j) for j in judges]:
        if scorer is not None and not callable(getattr(scorer, "score_text", None)):
            raise InputError(f"{role} must be a reward adapter with score_text (e.g. rewards.TextReward), got "
                             f"{type(scorer).__name__}")
    names = [j.name for j in judges]
    if len(set(names)) != len(names):
        raise InputError(f"judges need distinct names (records are keyed by them), got {names}")
    return judges


@dataclass(frozen=True)
class Batch:
    prompts: list[str]
    prompt_ids: list
    encoded: list[list[int]]      # the dLLM's token ids of each prompt (chat template applied)
    seeds: list[int] | None = None   # each prompt's seed (None: the config's for all)

    def seed_of(self, b: int, default: int) -> int:
        return self.seeds[b] if self.seeds is not None else default

    def __len__(self) -> int:
        return len(self.prompts)


def check_prompts(prompts) -> list[str]:
    if isinstance(prompts, str) or not isinstance(prompts, (list, tuple)):
        raise InputError(f"generate: prompts must be a list of strings, got {type(prompts).__name__}")
    if not prompts:
        raise InputError("generate: the prompt list is empty")
    for i, p in enumerate(prompts):
        if not isinstance(p, str):
            raise InputError(f"generate: prompt {i} is not a string ({type(p).__name__}: {p!r})")
        if not p.strip():
            raise InputError(f"generate: prompt {i} is empty")
    return list(prompts)


def check_prompt_lengths(model, encoded: list[list[int]], prompt_ids: list, max_new_tokens: int, *,
                         reward=None, prompts: list[str] | None = None, max_pieces: int = 1) -> None:
    """Refuse, before any model compute, prompts whose encoded length plus the response exceeds the
    dLLM's position limit, or whose reward-model input (chat template + response of up to
    ``max_new_tokens * max_pieces`` RM tokens) exceeds the reward model's."""
    problems = []
    limit = model.max_positions
    if limit is not None:
        over = [pid for pid, e in zip(prompt_ids, encoded) if len(e) + max_new_tokens > limit]
        if over:
            problems.append(f"the diffusion LM allows {limit} positions, and prompt tokens + max_new_tokens "
                            f"({max_new_tokens}) exceed it for {len(over)} prompt(s): ids {_ids(over)}")
    rm_limit = getattr(reward, "max_positions", None) if reward is not None else None
    if rm_limit is not None and prompts is not None:
        need = [(pid, reward.template_length(p) + max_new_tokens * max_pieces) for pid, p in zip(prompt_ids, prompts)]
        over = [pid for pid, n in need if n > rm_limit]
        if over:
            problems.append(f"the reward model allows {rm_limit} positions, and its chat template + a response of "
                            f"up to {max_new_tokens * max_pieces} tokens exceed it for {len(over)} prompt(s): "
                            f"ids {_ids(over)}")
    if problems:
        raise InputError("prompts too long: " + "; ".join(problems) + ". Shorten or remove them, or lower "
                         "max_new_tokens; nothing was run.")


def _ids(ids: list, most: int = 10) -> str:
    shown = ", ".join(repr(i) for i in ids[:most])
    return shown + (f", ... ({len(ids) - most} more)" if len(ids) > most else "")
