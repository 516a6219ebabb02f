"""Judges nobody here wrote, as text rewards: they score final responses (``judges=[...]``, CLI
``--judges``) and never guide.

- ``VaderJudge`` ("vader"): VADER's compound sentiment of the response, in [-1, 1] (the
  ``vadersentiment`` package's human-rated lexicon and rules; Hutto and Gilbert, ICWSM 2014);
- ``GrammarJudge`` ("grammar"): minus the lints per word that ``harper`` (an offline grammar and
  spelling checker, the ``harper-py`` package) finds in the response;
- ``FluencyJudge`` ("fluency"): the mean log-probability per character of the response under
  textgenrnn's pretrained character LM (``entrgi_core.realworld.charlm``; the weights come from
  the built world's cache). A grammar linter alone cannot tell word salad from human text; an
  order-sensitive language model can.

Each is deterministic. An empty response has nothing to judge and scores ``empty`` (each judge's
worst by default, so that a method cannot gain by ending early); input that is not a list of
strings is refused with the rows it names.
"""
from __future__ import annotations

from functools import cached_property

from entrgi_core.errors import InputError, ScoreError
from rewards.text import TextReward


def _need(package: str, module: str):
    try:
        return __import__(module, fromlist=["_"])
    except ImportError:
        raise InputError(f"this judge needs the {package!r} package: pip install '{package}' "
                         "(make real-world installs it)") from None


class _Judge(TextReward):
    """A text judge: ``load`` builds its tool once (on first use), ``score`` reads non-empty texts;
    ``empty`` is the score of an empty response (default: the judge's ``worst``)."""

    title = "judge"      # the default name
    worst = -1.0         # the default score of an empty response

    def __init__(self, name: str | None = None, empty: float | None = None):
        super().__init__(self._score_all, batch_size=256, name=name or self.title)
        self.empty = float(self.worst if empty is None else empty)

    @cached_property
    def tool(self):
        return self.load()

    def load(self):
        raise NotImplementedError

    def score(self, texts: list[str]) -> list[float]:
        """One score per non-empty text."""
        raise NotImplementedError

    def _score_all(self, prompts: list[str], responses: list[str]) -> list[float]:
        bad = [i for i, r in enumerate(responses) if not isinstance(r, str)]
        if bad:
            raise ScoreError(f"{self.name}: response(s) {bad} are not strings", rows=bad)
        texts = {i: r for i, r in enumerate(responses) if r.strip()}
        scores = dict(zip(texts, self.score(list(texts.values())))) if texts else {}
        return [scores.get(i, self.empty) for i in range(len(responses))]

    def identity(self) -> dict:
        return {"class": f"{type(self).__module__}.{type(self).__qualname__}", "name": self.name, "empty": self.empty}


class VaderJudge(_Judge):
    """VADER's compound sentiment in [-1, 1]."""

    title = "vader"

    def load(self):
        return _need("vadersentiment==3.3.2", "vaderSentiment.vaderSentiment").SentimentIntensityAnalyzer()

    def score(self, texts: list[str]) -> list[float]:
        return [float(self.tool.polarity_scores(t)["compound"]) for t in texts]


class GrammarJudge(_Judge):
    """Minus harper's lints per word (0 is clean)."""

    title = "grammar"

    def load(self):
        return _need("harper-py==0.2.0", "harper").Linter()

    def score(self, texts: list[str]) -> list[float]:
        lints = [len(self.tool.lint(t)) for t in texts]
        return [-n / max(1, len(t.split())) for n, t in zip(lints, texts)]


class FluencyJudge(_Judge):
    """Mean log-probability per character under textgenrnn's pretrained character LM; ``weights``
    is the folder with its files (default: the built world's)."""

    title, worst = "fluency", -10.0

    def __init__(self, name: str | None = None, empty: float | None = None, weights: str | None = None):
        super().__init__(name, empty)
        self.weights = weights

    def load(self):
        from pathlib import Path

        from entrgi_core.realworld import charlm_path
        from entrgi_core.realworld.charlm import CharLM

        _need("h5py", "h5py")
        folder = Path(self.weights) if self.weights else charlm_path()
        return CharLM.load(folder / "textgenrnn_weights.hdf5", folder / "textgenrnn_vocab.json")

    def score(self, texts: list[str]) -> list[float]:
        return self.tool.log_prob(texts)
