"""DenoiseConfig: the sampler's settings, validated on construction (before any model work)."""
from __future__ import annotations

from dataclasses import asdict, dataclass

from entrgi_core import checks
from entrgi_core.contract import Sampling
from entrgi_core.errors import InputError
from entrgi_core.schedules import PARALLEL_ALGS, SCHEDULES, ParallelSchedule

# confidence rules: Dream's four, then LLaDA's two remasking rules (see entrgi_core.schedules)
ALGS = ("origin", "maskgit_plus", "topk_margin", "entropy", "low_confidence", "random")
SCHEDULE_NAMES = tuple(SCHEDULES)
PARALLEL = tuple(name for name, cls in SCHEDULES.items() if issubclass(cls, ParallelSchedule))


@dataclass(frozen=True)
class DenoiseConfig:
    steps: int = 128               # T denoising steps (paper: 128)
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
    schedule: str | None = None    # "dream", "llada" (fixed counts), or the parallel "threshold", "factor",
                                   # "entropy_bound" (steps a maximum); None = the model's own default
    threshold: float = 0.9         # schedule="threshold": commit positions whose sampled token has p >= this (Fast-dLLM)
    factor: float = 1.0            # schedule="factor": Fast-dLLM's factor f, commit while (n+1)(1 - c_(n)) < f
    entropy_bound: float = 0.1     # schedule="entropy_bound": gamma, commit while sum(H) - max(H) <= gamma (EB sampler)
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
        if self.schedule is not None and self.schedule not in SCHEDULE_NAMES:
            raise InputError(f"{who}: schedule must be None (the model's default) or one of {SCHEDULE_NAMES}, "
                             f"got {self.schedule!r}")
        if self.alg == "origin" and self.schedule == "llada":
            raise InputError(f"{who}: alg='origin' commits each position with Dream's probability 1 - s/t; it needs "
                             "schedule='dream' (use alg='random' for LLaDA's random remasking)")
        checks.real(self.alg_temp, who=who, name="alg_temp", rule="be >= 0", ok=lambda v: v >= 0)
        self._check_parallel(who)
        checks.integer(self.seed, who=who, name="seed", minimum=0)
        if self.block_length is not None:
            checks.integer(self.block_length, who=who, name="block_length", minimum=1, optional=True)
            if self.max_new_tokens % self.block_length:
                raise InputError(f"{who}: block_length={self.block_length} does not divide "
                                 f"max_new_tokens={self.max_new_tokens}")
            if self.steps % self.num_blocks:
                raise InputError(f"{who}: steps={self.steps} must be a multiple of the number of blocks "
                                 f"({self.num_blocks})")

    def _check_parallel(self, who: str) -> None:
        """The parallel schedules' parameters and the block cache, all problems in one message."""
        problems = []
        for name, rule, ok in (("threshold", "lie in (0, 1]", lambda v: 0 < v <= 1),
                               ("factor", "be > 0", lambda v: v > 0), ("entropy_bound", "be >= 0", lambda v: v >= 0)):
            try:
                checks.real(getattr(self, name), who=who, name=name, rule=rule, ok=ok)
            except InputError as exc:
                problems.append(str(exc).removeprefix(f"{who}: "))
        if self.schedule in PARALLEL and (self.alg not in PARALLEL_ALGS or self.alg_temp > 0):
            problems.append(f"schedule={self.schedule!r} ranks positions by its own statistic, so it needs alg in "
                            f"{PARALLEL_ALGS} and alg_temp=0, not alg={self.alg!r}, alg_temp={self.alg_temp}")
        if self.cache not in (None, "prefix", "dual"):
            problems.append(f"cache must be None, 'prefix' or 'dual', got {self.cache!r}")
        elif self.cache is not None and self.block_length is None:
            problems.append(f"cache={self.cache!r} keeps keys and values per block: set block_length (e.g. 32)")
        if not isinstance(self.cache_refresh, int) or isinstance(self.cache_refresh, bool) or self.cache_refresh < 0:
            problems.append(f"cache_refresh must be an integer >= 0, got {self.cache_refresh!r}")
        if problems:
            raise InputError(f"{who}: " + "; ".join(problems))

    @property
    def parallel(self) -> bool:
        """Whether the schedule commits a variable number of positions (steps are then a maximum)."""
        return self.schedule in PARALLEL

    @property
    def sampling(self) -> Sampling:
        """The token distribution's settings (temperature, top-p, top-k), as strategies see them."""
        return Sampling(self.temperature, self.top_p, self.top_k)

    @property
    def num_blocks(self) -> int:
        return 1 if self.block_length is None else self.max_new_tokens // self.block_length

    def to_dict(self) -> dict:
        return asdict(self)
