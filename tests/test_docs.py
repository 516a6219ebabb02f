"""Every Python block and every command in README.md and docs/*.md runs as written: Python blocks
in this interpreter (at a test's size in the fast lane, as written in the slow one), ``entrgi``
lines through the CLI in-process (whole runs are ``slow``, the
multi-process ones in fresh interpreters; those that need downloaded weights with ``--print_config``,
which parses them without loading; ``predict`` and ``fit`` at a test's size: 4 prompts, 8 steps of
8 tokens, two training steps). The two ``make`` lines are what CI and the demo run."""
import os
import re
import shlex
import subprocess
import sys

import pytest

from tests.helpers import ROOT, in_process_cli

PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
TEXT = {page: page.read_text() for page in PAGES}
PYTHON_BLOCKS = [(page.relative_to(ROOT).as_posix(), block) for page, text in TEXT.items()
                 for block in re.findall(r"```python\n(.*?)```", text, re.S)]
COMMANDS = [(page.relative_to(ROOT).as_posix(), line.strip()) for page, text in TEXT.items()
            for block in re.findall(r"```bash\n(.*?)```", text, re.S) for line in block.splitlines()
            if line.strip() and not line.strip().startswith("#")]


def test_readme_starts_with_the_two_commands_and_is_short():
    readme = TEXT[ROOT / "README.md"]
    first = re.search(r"```bash\n(.*?)```", readme, re.S).group(1).splitlines()
    assert [line.split("#")[0].strip() for line in first] == ["make demo", "make test"]
    assert readme.count("\n") <= 200


def test_every_command_is_of_a_kind_this_module_runs():
    kinds = {line.split()[0] for _, line in COMMANDS}
    assert kinds <= {"make", ".venv/bin/entrgi"}, kinds
    # make real-world is its own target (its pipeline runs end to end at a test's budget in tests/test_realworld.py)
    assert {line.split("#")[0].strip() for _, line in COMMANDS if line.startswith("make")} <= {"make demo", "make test",
                                                                                              "make real-world"}


def test_links_between_the_pages_resolve():
    for page, text in TEXT.items():
        for target in re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", text):
            assert (page.parent / target).exists(), f"{page.name}: {target}"


@pytest.mark.parametrize("size", [pytest.param("test"), pytest.param("full", marks=pytest.mark.slow)])
@pytest.mark.parametrize("block", [b for _, b in PYTHON_BLOCKS],
                         ids=[f"{page}:{b.splitlines()[-1][:30]}" for page, b in PYTHON_BLOCKS])
def test_python_blocks_run(block, size, tmp_path, monkeypatch):
    """Each block runs as written, imports included: at a test's size in the fast lane (every
    ``DenoiseConfig`` capped at 8 steps of 8 tokens and 2 samples), as written in the slow one.
    Blocks that load real checkpoints get tiny random models of the same classes in their place
    (no downloads), with room for 128 tokens."""
    from entrgi_core import DreamLM, MaskedLM
    from rewards import HFRewardModel
    from tests.helpers import save_tiny_dlm, save_tiny_rm

    if size == "test":
        at_test_size(monkeypatch)
    if "realworld" in block:                            # the real world's blocks: against a test-size world
        from tests.helpers import build_tiny_world

        build_tiny_world(tmp_path / "home")
        monkeypatch.setenv("ENTRGI_HOME", str(tmp_path / "home"))

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
    code = block.replace('"outputs/', f'"{tmp_path}/outputs/')
    exec(compile(code, "docs", "exec"), {"__name__": "docs"})


def at_test_size(monkeypatch, steps: int = 8, length: int = 8, samples: int = 2) -> None:
    """Every ``DenoiseConfig`` made from now on is capped at ``steps`` steps of ``length`` tokens
    and ``samples`` samples (blocks shrunk to fit), before its own checks run."""
    from entrgi_core.config import DenoiseConfig

    checks = DenoiseConfig.__post_init__

    def capped(cfg):
        small = dict(steps=min(cfg.steps, steps), max_new_tokens=min(cfg.max_new_tokens, length),
                     num_samples=min(cfg.num_samples, samples))
        if cfg.block_length is not None:
            block = min(cfg.block_length, small["max_new_tokens"])
            block = block if small["max_new_tokens"] % block == 0 else small["max_new_tokens"]
            blocks = small["max_new_tokens"] // block
            small.update(block_length=block, steps=max(blocks, small["steps"] // blocks * blocks))
        for name, value in small.items():
            object.__setattr__(cfg, name, value)
        checks(cfg)

    monkeypatch.setattr(DenoiseConfig, "__post_init__", capped)


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


def parse_only(line: str) -> bool:
    """A paper setup needs downloaded weights: the test parses it (``--print_config``), a fast check."""
    return "configs/paper/" in line


def arguments(line: str, tmp_path) -> list[str]:
    args = [a if not a.startswith("outputs/") else str(tmp_path / a) for a in shlex.split(line)[1:]]   # as a shell
    if parse_only(line):
        return args + ["--print_config"]
    if "--output_dir" not in args and args[0] in ("predict", "fit"):
        args += ["--output_dir", str(tmp_path / "out")]
    if args[0] == "predict" and not any(a.startswith("--sampling.steps") for a in args):   # at a test's size
        args += ["--sampling.steps", "8", "--sampling.max_new_tokens", "8"]
    if args[0] == "fit":                               # the documented run, at a test's size
        args += ["--trainer.max_steps", "2", "--sampling.steps", "8", "--sampling.max_new_tokens", "8",
                 "--data.batch_size", "2"]
    return args + ["--data.limit", "4"]


ENTRGI = [(page, line) for page, line in COMMANDS if line.startswith(".venv/bin/entrgi")]
IN_PROCESS = [(p, c) for p, c in ENTRGI if "--trainer.devices 2" not in c]


@pytest.mark.parametrize("command", [
    pytest.param(c, id=f"{p}:{c[17:60]}", marks=[] if parse_only(c) else [pytest.mark.slow])   # else a whole run
    for p, c in IN_PROCESS])
def test_entrgi_commands_run(command, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(ROOT)
    code, err = in_process_cli(*arguments(command, tmp_path))
    assert code == 0, err[-3000:]


@pytest.mark.slow
@pytest.mark.parametrize("command", [c for _, c in ENTRGI if "--trainer.devices 2" in c])
def test_multi_process_commands_run(command, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "entrgi_core.cli", *arguments(command, tmp_path)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
