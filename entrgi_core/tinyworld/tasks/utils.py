"""The tiny world's lm-eval task (tinyworld_reviews.yaml): its prompts and its judges."""
import json
from functools import lru_cache
from pathlib import Path

PROMPTS = Path(__file__).resolve().parent.parent / "prompts.jsonl"


def load_prompts(**kwargs):
    """{"test": the held-out prompts} as a datasets.Dataset (fields id, prompt)."""
    import datasets

    rows = [json.loads(line) for line in PROMPTS.read_text().splitlines() if line.strip()]
    return {"test": datasets.Dataset.from_list(rows)}


@lru_cache(maxsize=1)
def _judges():
    from entrgi_core.tinyworld.judges import OracleJudge, ValidityJudge

    return OracleJudge(), ValidityJudge()


def process_results(doc, results):
    """The oracle's and the validity judge's score of the generated text."""
    oracle, valid = _judges()
    prompt, text = [doc["prompt"]], [results[0]]
    return {"oracle": float(oracle.score_text(prompt, text)[0]), "valid": float(valid.score_text(prompt, text)[0])}
