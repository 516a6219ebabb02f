"""Every command in README.md runs: its Python blocks here, the `entrgi` lines through the CLI
(the two `make` lines are what CI and the demo run)."""
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
PYTHON_BLOCKS = re.findall(r"```python\n(.*?)```", README, re.S)
COMMANDS = [line.strip() for block in re.findall(r"```bash\n(.*?)```", README, re.S) for line in block.splitlines()
            if line.strip() and not line.startswith("#")]


def test_readme_starts_with_the_two_commands():
    first = re.search(r"```bash\n(.*?)```", README, re.S).group(1).splitlines()
    assert [line.split("#")[0].strip() for line in first] == ["make demo", "make test"]


@pytest.mark.parametrize("block", PYTHON_BLOCKS, ids=lambda b: b.splitlines()[-1][:40])
def test_python_blocks_run(block, tmp_path, monkeypatch):
    """Each block runs as written, imports included. Blocks that load real checkpoints get tiny
    random models of the same classes in their place (no downloads), with room for 128 tokens."""
    from entrgi_core import DreamLM, MaskedLM
    from rewards import HFRewardModel
    from tests.tiny import save_tiny_dlm, save_tiny_rm

    def tiny_dream(path, **kwargs):
        assert path.count("/") == 1, path                                   # a hub name, as written
        masked_lm = MaskedLM(str(save_tiny_dlm(tmp_path / "dlm", positions=512)))
        return DreamLM.from_model(masked_lm.model, masked_lm.tokenizer)     # CPU, float32

    def tiny_rm(path, **kwargs):
        assert path.count("/") == 1, path
        return HFRewardModel(str(save_tiny_rm(tmp_path / "rm", positions=512)))

    monkeypatch.setattr(DreamLM, "from_pretrained", tiny_dream)
    monkeypatch.setattr(HFRewardModel, "from_pretrained", tiny_rm)
    patch_dreams_own_sampler(monkeypatch)
    monkeypatch.chdir(ROOT)
    code = block.replace('"outputs/readme"', repr(str(tmp_path / "readme")))
    exec(compile(code, "README.md", "exec"), {"__name__": "readme"})


def patch_dreams_own_sampler(monkeypatch):
    """``AutoModel`` / ``AutoTokenizer`` of a Dream hub name give the tiny world's masked LM behind a
    stand-in ``diffusion_generate`` with Dream's calling convention (``tests/dream_like.py``)."""
    import transformers

    from entrgi_core import MaskedLM, tinyworld
    from tests.dream_like import DreamLike

    model_loader, tok_loader = transformers.AutoModel.from_pretrained, transformers.AutoTokenizer.from_pretrained

    def model(name, *args, **kwargs):
        if not str(name).startswith("Dream-org/"):
            return model_loader(name, *args, **kwargs)
        dlm = MaskedLM(str(tinyworld.dlm_path()))
        return DreamLike(dlm.model, dlm.mask_id)

    def tokenizer(name, *args, **kwargs):
        if not str(name).startswith("Dream-org/"):
            return tok_loader(name, *args, **kwargs)
        return MaskedLM(str(tinyworld.dlm_path())).tokenizer

    monkeypatch.setattr(transformers.AutoModel, "from_pretrained", model)
    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", tokenizer)


@pytest.mark.parametrize("command", [c for c in COMMANDS if c.startswith(".venv/bin/entrgi")])
def test_cli_commands_run(command, tmp_path):
    args = command.split()[1:]
    args = [a if not a.startswith("outputs/") else str(tmp_path / a) for a in args]
    if "--output_dir" not in args:
        args += ["--output_dir", str(tmp_path / "out")]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "entrgi_core.cli", *args, "--data.limit", "4"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
