"""DenoiseConfig: the sampler's settings, validated on construction (before any model work)."""
from __future__ import annotations

from dataclasses import dataclass, fields

from entrgi_core import checks
from entrgi_core.contract import Sampling
from entrgi_core.errors import InputError
from entrgi_core.schedules.base import CommitSchedule

# confidence rules: Dream's four, then LLaDA's two remasking rules (see entrgi_core.schedules.fixed)
ALGS = ("origin", "maskgit_plus", "topk_margin", "entropy", "low_confidence", "random")
CACHES = (None, "prefix", "dual")


@dataclass(frozen=True)
class DenoiseConfig:
    steps: int = 128               # T denoising steps (paper: 128); a maximum under a parallel schedule
    max_new_tokens: int = 128      # L response positions, all masked at the start (paper: 128)
    num_samples: int = 4           # K samples per prompt; Top@1 is the best of these (paper: 4)
    temperature: float = 0.7       # tau of the token sampling distribution (paper: 0.7); 0 = greedy
    top_p: float = 0.95            # nucleus mass kept when sampling (paper: 0.95)
    top_k: int | None = None       # keep only the k most likely tokens (None = all)
    alg: str = "entropy"           # confidence rule: which masked positions are committed first
    alg_temp: float = 0.0          # > 0: commit order sampled with Gumbel noise at this temperature
    deprioritize_eos: bool = True  # a sampled end-of-sequence is committed last
    seed: int = 0                  # with the prompt id, seeds every random draw of a prompt
    block_length: int | None = None  # LLaDA-style semi-autoregressive blocks (None = one block)
    schedule: CommitSchedule | None = None   # how many positions a step commits (entrgi_core.schedules, e.g.
                                             # Threshold(0.9)); None = the model's own (Dream's, LLaDA's)
    cache: str | None = None       # block KV cache of the dLLM: None (exact), "prefix" or "dual" (approximate)
    cache_refresh: int = 0         # with a cache: also refresh it every this many steps of a block (0: at block starts)

    def __post_init__(self):
        who = "DenoiseConfig"
        for name in ("steps", "max_new_tokens", "num_samples"):
            checks.integer(getattr(self, name), who=who, name=name, minimum=1)
        checks.temperature(self.temperature, who=who, greedy_ok=True)
        checks.top_p(self.top_p, who=who)
        checks.integer(self.top_k, who=who, name="top_k", minimum=1, optional=True)
        checks.one_of(self.alg, ALGS, who=who, name="alg")
        checks.real(self.alg_temp, who=who, name="alg_temp", rule="be >= 0", ok=lambda v: v >= 0)
        if self.schedule is not None and not isinstance(self.schedule, CommitSchedule):
            raise InputError(f"{who}: schedule must be None (the model's own) or a CommitSchedule object such as "
                             f"entrgi_core.schedules.Threshold(0.9), got {self.schedule!r}")
        checks.integer(self.seed, who=who, name="seed", minimum=0)
        if self.block_length is not None:
            checks.integer(self.block_length, who=who, name="block_length", minimum=1, optional=True)
            if self.max_new_tokens % self.block_length:
                raise InputError(f"{who}: block_length={self.block_length} does not divide "
                                 f"max_new_tokens={self.max_new_tokens}")
            if self.steps % self.num_blocks:
                raise InputError(f"{who}: steps={self.steps} must be a multiple of the number of blocks "
                                 f"({self.num_blocks})")
        self._check_cache(who)

    def _check_cache(self, who: str) -> None:
        """The block cache's settings, all problems in one message."""
        problems = []
        if self.cache not in CACHES:
            problems.append(f"cache must be None, 'prefix' or 'dual', got {self.cache!r}")
        elif self.cache is not None and self.block_length is None:
            problems.append(f"cache={self.cache!r} keeps keys and values per block: set block_length (e.g. 32)")
        if not isinstance(self.cache_refresh, int) or isinstance(self.cache_refresh, bool) or self.cache_refresh < 0:
            problems.append(f"cache_refresh must be an integer >= 0, got {self.cache_refresh!r}")
        if problems:
            raise InputError(f"{who}: " + "; ".join(problems))

    @property
    def sampling(self) -> Sampling:
        """The token distribution's settings (temperature, top-p, top-k), as strategies see them."""
        return Sampling(self.temperature, self.top_p, self.top_k)

    @property
    def num_blocks(self) -> int:
        return 1 if self.block_length is None else self.max_new_tokens // self.block_length

    def to_dict(self) -> dict:
        """JSON-ready settings (the schedule as its ``settings()``), for run records."""
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        out["schedule"] = self.schedule.settings() if self.schedule is not None else None
        return out


OLD_SCHEDULE_FIELDS = ("threshold", "factor", "entropy_bound")


def old_spelling(config: dict | None) -> str | None:
    """Why a run record's sampling settings (a ``to_dict``) come from the string spelling of commit
    schedules that this version no longer reads, or None when they do not."""
    if not isinstance(config, dict):
        return None
    if any(k in config for k in OLD_SCHEDULE_FIELDS) or isinstance(config.get("schedule"), str):
        return (f"they were written by an earlier entrgi whose commit schedule was a string "
                f"(schedule={config.get('schedule')!r} with threshold/factor/entropy_bound fields); schedules are "
                "objects now (e.g. --sampling.schedule entrgi_core.schedules.Threshold), so the two cannot be "
                "compared")
    return None
