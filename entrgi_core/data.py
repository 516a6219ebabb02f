"""PromptDataModule: prompts from a JSONL / CSV file, an inline list or a Hugging Face dataset,
each with a stable prompt id (the id field, or a hash of the text).

Everything is read and validated on construction, so a bad prompt file fails before any model
is loaded. ``leave_out(ids)`` (called by the prediction writer when resuming) removes prompts
already done from prediction.

For ``trainer.fit`` (``entrgi fit``) the data module yields the batch of each global step: step s
takes positions ``s*G .. (s+1)*G - 1`` (G = ``batch_size`` x ranks) of an endless stream of
permutations of the prompts (pass e shuffled by ``numpy.random.default_rng([shuffle_seed, e])``),
and rank r its r-th slice of ``batch_size``. The batches depend on the step only: a resumed run
continues the stream where its checkpoint stopped, and one device with batch G sees what G / n
per rank on n devices see together.
"""
from __future__ import annotations

import csv
import hashlib
import json
import random
import warnings
from pathlib import Path

import lightning as L
import numpy as np
from torch.utils.data import DataLoader, Dataset, IterableDataset

from entrgi_core.errors import InputError


def text_id(text: str) -> str:
    """Stable id of a prompt without an id field: 16 hex digits of its BLAKE2b hash."""
    return hashlib.blake2b(text.encode(), digest_size=8).hexdigest()


class _Prompts(Dataset):
    def __init__(self, items: list[dict]):
        self.items = items

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        return self.items[i]


def _collate(items: list[dict]) -> dict:
    return {"id": [it["id"] for it in items], "prompt": [it["prompt"] for it in items]}


class StepBatches(IterableDataset):
    """The training batches of global steps ``start .. stop - 1`` for one rank (see the module
    docstring): each ``{"id", "prompt", "position", "step"}``."""

    def __init__(self, items: list[dict], batch_size: int, seed: int, start: int, stop: int, rank: int = 0,
                 world: int = 1):
        self.items, self.batch_size, self.seed = items, batch_size, seed
        self.start, self.stop, self.rank, self.world = start, stop, rank, world
        self._passes: dict[int, np.ndarray] = {}

    def __len__(self) -> int:
        return max(self.stop - self.start, 0)

    def _at(self, position: int) -> dict:
        n = len(self.items)
        order = self._passes.get(position // n)
        if order is None:
            order = self._passes[position // n] = np.random.default_rng([self.seed, position // n]).permutation(n)
        return self.items[int(order[position % n])]

    def batch(self, step: int) -> dict:
        first = (step * self.world + self.rank) * self.batch_size
        positions = list(range(first, first + self.batch_size))
        items = [self._at(p) for p in positions]
        return {**_collate(items), "position": positions, "step": step}

    def __iter__(self):
        for step in range(self.start, self.stop):
            yield self.batch(step)


class PromptDataModule(L.LightningDataModule):
    """Args:
        path: a .jsonl or .csv file of records.
        prompts: an inline list of prompt strings (instead of ``path``).
        dataset, split, subset: a Hugging Face dataset (needs the ``datasets`` package).
        field: the record field holding the prompt. id_field: the field holding its id.
        subset_size, shuffle_seed, slicing: a reproducible subset of ``subset_size`` prompts drawn
            with ``shuffle_seed`` (None: 0; the ``entrgi`` CLI uses ``--sampling.seed``).
            ``slicing="random"`` samples with Python's ``random``; ``slicing="hf"`` takes the
            first ``subset_size`` records of the Hugging Face ``datasets`` shuffle with that seed,
            ``ds.shuffle(seed=s).select(range(n))``, as the EntRGi authors do (the same numpy
            permutation, so it also applies to files).
        limit: keep the first ``limit`` prompts (after the subset).
        batch_size: prompts per predict batch (each yields K samples).
    """

    def __init__(self, path: str | None = None, prompts: list[str] | None = None, dataset: str | None = None,
                 split: str = "train", subset: str | None = None, field: str = "prompt",
                 id_field: str | None = None, subset_size: int | None = None, shuffle_seed: int | None = None,
                 slicing: str = "random", limit: int | None = None, batch_size: int = 8, num_workers: int = 0):
        super().__init__()
        sources = [s for s in (path, prompts, dataset) if s is not None]
        if len(sources) != 1:
            raise InputError("PromptDataModule: give exactly one of path=, prompts= or dataset=")
        if batch_size < 1:
            raise InputError(f"PromptDataModule: batch_size must be >= 1, got {batch_size}")
        for name, v in (("limit", limit), ("subset_size", subset_size)):
            if v is not None and v < 1:
                raise InputError(f"PromptDataModule: {name} must be >= 1, got {v}")
        if slicing not in ("random", "hf"):
            raise InputError(f"PromptDataModule: slicing must be 'random' or 'hf', got {slicing!r}")
        self.batch_size, self.num_workers = batch_size, num_workers
        seed = 0 if shuffle_seed is None else int(shuffle_seed)
        self.shuffle_seed = seed
        if prompts is not None:
            records, where = [{field: p} for p in prompts], "the inline prompt list"
        elif path is not None:
            records, where = _read_file(Path(path).expanduser()), str(path)
        else:
            records, where = _read_hf(dataset, split, subset), f"dataset {dataset} ({split})"
        items = _validate(records, field, id_field, where)
        if subset_size is not None and subset_size < len(items):
            if slicing == "hf":          # datasets' Dataset.shuffle(seed): numpy default_rng(seed).permutation
                items = [items[i] for i in np.random.default_rng(seed).permutation(len(items))[:subset_size]]
            else:
                items = random.Random(seed).sample(items, subset_size)
        if limit is not None:
            items = items[:limit]
        self.items = items
        self._done: frozenset = frozenset()      # prompt ids a resumed run has already done (``leave_out``)
        # a file's location is not part of the identity (the fingerprint is): a moved file still resumes
        self.source = {"dataset": dataset,
                       "split": split if dataset else None, "subset": subset, "field": field, "id_field": id_field,
                       "subset_size": subset_size, "shuffle_seed": seed if subset_size else None,
                       "slicing": slicing if subset_size else None, "limit": limit}

    def identity(self) -> dict:
        """Where the prompts come from and a fingerprint of exactly which (id, text) pairs: an output
        directory belongs to one identity."""
        digest = hashlib.blake2b(digest_size=16)
        for it in self.items:
            digest.update(json.dumps([it["id"], it["prompt"]]).encode())
        return {**{k: v for k, v in self.source.items() if v is not None}, "prompts": len(self.items),
                "fingerprint": digest.hexdigest()}

    def __len__(self) -> int:
        return len(self.items)

    def leave_out(self, ids) -> int:
        """Predict only the prompts whose id is not in ``ids`` (those a resumed run has already
        done); returns how many of this module's prompts that leaves out."""
        self._done = frozenset(ids)
        return sum(it["id"] in self._done for it in self.items)

    def remaining(self) -> list[dict]:
        return [it for it in self.items if it["id"] not in self._done]

    def train_dataloader(self) -> DataLoader:
        """The batch of each remaining global step (up to ``trainer.max_steps``) of this rank."""
        warnings.filterwarnings("ignore", message=r"Your `IterableDataset` has `__len__` defined")  # no workers
        trainer = self.trainer
        data = StepBatches(self.items, self.batch_size, self.shuffle_seed, trainer.global_step, trainer.max_steps,
                           trainer.global_rank, trainer.world_size)
        return DataLoader(data, batch_size=None, num_workers=0)

    def predict_dataloader(self) -> DataLoader:
        return DataLoader(_Prompts(self.remaining()), batch_size=self.batch_size, shuffle=False,
                          collate_fn=_collate, num_workers=self.num_workers)


def _read_file(path: Path) -> list[dict]:
    if not path.is_file():
        raise FileNotFoundError(f"prompt file not found: {path}")
    try:
        return _parse_file(path)
    except UnicodeDecodeError as exc:
        raise InputError(f"prompt file {path} is not UTF-8 text (byte {exc.start}: {exc.reason})") from None


def _parse_file(path: Path) -> list[dict]:
    suffix = path.suffix.lower()
    if suffix == ".csv":
        with path.open(newline="", encoding="utf-8") as f:
            records = list(csv.DictReader(f))
    elif suffix in (".jsonl", ".json"):
        records = []
        with path.open(encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise InputError(f"{path}:{n}: not a JSON line ({exc.msg})") from None
                if not isinstance(rec, dict):
                    raise InputError(f"{path}:{n}: expected a JSON object, got {type(rec).__name__}")
                records.append(rec)
    else:
        raise InputError(f"prompt file {path}: expected a .jsonl or .csv file")
    if not records:
        raise InputError(f"prompt file {path} holds no records")
    return records


def _read_hf(name: str, split: str, subset: str | None) -> list[dict]:
    try:
        import datasets
    except ImportError:
        raise InputError(f"dataset={name!r} needs the `datasets` package: pip install datasets") from None
    try:
        ds = datasets.load_dataset(name, subset, split=split)
    except Exception as exc:  # offline, unknown name or split: say which
        raise InputError(f"could not load dataset {name!r} (subset {subset!r}, split {split!r}): {exc}") from exc
    return [dict(r) for r in ds]


def _validate(records: list[dict], field: str, id_field: str | None, where: str) -> list[dict]:
    if not records:
        raise InputError(f"{where} holds no prompts")
    items, seen = [], {}
    for n, rec in enumerate(records, 1):
        if field not in rec:
            raise InputError(f"{where}: record {n} has no field {field!r} (fields: {sorted(rec)[:10]})")
        prompt = rec[field]
        if not isinstance(prompt, str):
            raise InputError(f"{where}: record {n}: the prompt in field {field!r} is not a string "
                             f"({type(prompt).__name__}: {prompt!r})")
        if not prompt.strip():
            raise InputError(f"{where}: record {n} has an empty prompt in field {field!r}")
        if id_field is not None:
            if id_field not in rec or rec[id_field] in (None, ""):
                raise InputError(f"{where}: record {n} has no id in field {id_field!r}")
            pid = str(rec[id_field])
        else:
            pid = text_id(prompt)
        if pid in seen:
            what = f"id {pid!r}" if id_field else "prompt text (ids are text hashes)"
            raise InputError(f"{where}: records {seen[pid]} and {n} have the same {what}")
        seen[pid] = n
        items.append({"id": pid, "prompt": prompt})
    return items
