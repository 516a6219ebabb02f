"""DenoiseConfig: the sampler's settings, validated on construction (before any model work)."""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from entrgi_core.schedules import SCHEDULES

# confidence rules: Dream's four, then LLaDA's two remasking rules (see entrgi_core.schedules)
ALGS = ("origin", "maskgit_plus", "topk_margin", "entropy", "low_confidence", "random")
SCHEDULE_NAMES = tuple(SCHEDULES)


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
    schedule: str | None = None    # commit counts: "dream" or "llada" (None = the model's own default)

    def __post_init__(self):
        def bad(msg):
            raise ValueError(f"DenoiseConfig: {msg}")

        for name in ("steps", "max_new_tokens", "num_samples"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                bad(f"{name} must be an integer >= 1, got {v!r}")
        if not (isinstance(self.temperature, (int, float)) and math.isfinite(self.temperature) and self.temperature >= 0):
            bad(f"temperature must be >= 0 (0 = greedy), got {self.temperature!r}")
        if isinstance(self.top_p, bool) or not (isinstance(self.top_p, (int, float)) and 0 < self.top_p <= 1):
            bad(f"top_p must lie in (0, 1], got {self.top_p!r}")
        if self.top_k is not None and (not isinstance(self.top_k, int) or isinstance(self.top_k, bool) or self.top_k < 1):
            bad(f"top_k must be None or an integer >= 1, got {self.top_k!r}")
        if self.alg not in ALGS:
            bad(f"alg must be one of {ALGS}, got {self.alg!r}")
        if self.schedule is not None and self.schedule not in SCHEDULE_NAMES:
            bad(f"schedule must be None (the model's default) or one of {SCHEDULE_NAMES}, got {self.schedule!r}")
        if self.alg == "origin" and self.schedule == "llada":
            bad("alg='origin' commits each position with Dream's probability 1 - s/t; it needs schedule='dream' "
                "(use alg='random' for LLaDA's random remasking)")
        if not (isinstance(self.alg_temp, (int, float)) and math.isfinite(self.alg_temp) and self.alg_temp >= 0):
            bad(f"alg_temp must be >= 0, got {self.alg_temp!r}")
        if self.block_length is not None:
            if not isinstance(self.block_length, int) or self.block_length < 1:
                bad(f"block_length must be None or an integer >= 1, got {self.block_length!r}")
            if self.max_new_tokens % self.block_length:
                bad(f"block_length={self.block_length} does not divide max_new_tokens={self.max_new_tokens}")
            blocks = self.max_new_tokens // self.block_length
            if self.steps % blocks:
                bad(f"steps={self.steps} must be a multiple of the number of blocks ({blocks})")

    @property
    def num_blocks(self) -> int:
        return 1 if self.block_length is None else self.max_new_tokens // self.block_length

    def to_dict(self) -> dict:
        return asdict(self)
