"""Issue 8 on the command line and the data side: prompts over the position limit, output
directories owned by one data source, non-string prompts, condensed errors, the authors' prompt
slices, and the smaller review items (reward-model registration, caches, packaging)."""
import json
import os
import subprocess
import time
from importlib import metadata
from pathlib import Path

import pytest
import yaml

from entrgi_core.data import PromptDataModule
from entrgi_core.writer import read_jsonl
from tests.test_lightning import cli

ROOT = Path(__file__).resolve().parents[1]


def prompts_file(path: Path, prompts: list[str]) -> Path:
    path.write_text("".join(json.dumps({"prompt": p, "id": f"p{i}"}) + "\n" for i, p in enumerate(prompts)))
    return path


@pytest.fixture
def config(tmp_path, tiny_dlm_path, tiny_rm_path):
    cfg = {
        "dlm": {"class_path": "entrgi_core.models.MaskedLM", "init_args": {"path": str(tiny_dlm_path)}},
        "reward": {"class_path": "rewards.HFRewardModel", "init_args": {"path": str(tiny_rm_path)}},
        "guidance": {"class_path": "guidance.EntRGi", "init_args": {"steps": 1}},
        "sampling": {"steps": 2, "max_new_tokens": 6, "num_samples": 2},
        "data": {"path": str(prompts_file(tmp_path / "a.jsonl", ["write a review of the hotel",
                                                                  "write a review of the zoo"])),
                 "id_field": "id", "batch_size": 2},
        "trainer": {"accelerator": "cpu", "devices": 1, "enable_progress_bar": False},
        "output_dir": str(tmp_path / "out"),
    }
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def snapshot(directory: Path) -> dict:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir())}


def test_a_prompt_over_the_limit_is_refused_and_nothing_written_changes(config, tmp_path):
    out = tmp_path / "out"
    cli("predict", "--config", str(config))
    before = snapshot(out)
    long = prompts_file(tmp_path / "long.jsonl", ["write a review of the hotel", " ".join(["great"] * 3000)])
    proc = cli("predict", "--config", str(config), "--data.path", str(long), "--overwrite", "true", check=False)
    assert proc.returncode == 2
    assert "diffusion LM allows 128 positions" in proc.stderr and "ids 'p1'" in proc.stderr
    assert "Traceback" not in proc.stderr and "IndexError" not in proc.stderr
    assert snapshot(out) == before


def test_an_output_directory_belongs_to_one_data_source(config, tmp_path):
    out = tmp_path / "out"
    cli("predict", "--config", str(config))
    before = snapshot(out)
    other = prompts_file(tmp_path / "b.jsonl", ["write a review of the museum"])
    proc = cli("predict", "--config", str(config), "--data.path", str(other), check=False)
    assert proc.returncode == 2 and "different data source" in proc.stderr and "--overwrite true" in proc.stderr
    assert snapshot(out) == before
    cli("predict", "--config", str(config))                           # the same source resumes: nothing to do
    assert (out / "predictions.jsonl").read_bytes() == before["predictions.jsonl"]
    cli("predict", "--config", str(config), "--data.path", str(other), "--overwrite", "true")
    recs = read_jsonl(out / "predictions.jsonl")
    assert [r["prompt"] for r in recs] == ["write a review of the museum"]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["prompts"] == 1 and summary["config"]["data"]["prompts"] == 1
    assert summary["vocabulary"]["exact"] > 0 and summary["vocabulary"]["coverage"] > 0.95


def test_a_moved_prompt_file_still_resumes(tmp_path):
    a = PromptDataModule(path=str(prompts_file(tmp_path / "a.jsonl", ["x", "y"])))
    (tmp_path / "moved").mkdir()
    b = PromptDataModule(path=str(prompts_file(tmp_path / "moved" / "a.jsonl", ["x", "y"])))
    c = PromptDataModule(path=str(prompts_file(tmp_path / "c.jsonl", ["x", "z"])))
    assert a.identity() == b.identity() != c.identity()


def test_a_number_as_prompt_is_not_a_string(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text('{"prompt": "fine"}\n{"prompt": 42}\n')
    with pytest.raises(ValueError, match=r"record 2: the prompt in field 'prompt' is not a string \(int: 42\)"):
        PromptDataModule(path=str(path))


def test_misconfiguration_gives_one_paragraph(config):
    env = {"HF_HUB_OFFLINE": "1"}
    for path, says in (("/no/such/model", "'/no/such/model' does not exist"),
                       ("someone/no-such-model", "not a local directory and not in the local cache")):
        t0 = time.perf_counter()
        proc = cli("predict", "--config", str(config), "--dlm.init_args.path", path, check=False, env_extra=env)
        assert proc.returncode == 2 and says in proc.stderr and "MaskedLM path" in proc.stderr
        assert "Namespace(" not in proc.stderr and "Union" not in proc.stderr
        assert time.perf_counter() - t0 < 60                          # no hub retries
    proc = cli("predict", "--config", str(config), "--guidance", "guidance.EntRGI", check=False)
    assert proc.returncode == 2 and "Did you mean 'guidance.EntRGi'" in proc.stderr
    assert "guidance.NoGuidance" in proc.stderr and "--trainer.accelerator" not in proc.stderr   # no usage wall
    assert len(proc.stderr.strip().splitlines()) <= 3


def test_the_authors_prompt_slices(tmp_path):
    datasets = pytest.importorskip("datasets")
    rows = [{"prompt": f"question {i}"} for i in range(300)]
    path = tmp_path / "p.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    for seed in (1, 2, 3):
        want = datasets.Dataset.from_list(rows).shuffle(seed=seed).select(range(64))["prompt"]
        dm = PromptDataModule(path=str(path), subset_size=64, shuffle_seed=seed, slicing="hf")
        assert [it["prompt"] for it in dm.items] == want
    with pytest.raises(ValueError, match="slicing must be 'random' or 'hf'"):
        PromptDataModule(path=str(path), slicing="numpy")


def test_the_cli_ties_the_slice_to_the_sampling_seed(config, capsys, monkeypatch):
    from tests.test_lightning import print_config
    monkeypatch.chdir(ROOT)
    assert print_config([config], capsys, "--sampling.seed", "3")["data"]["shuffle_seed"] is None
    from entrgi_core.cli import EntrgiCLI, _Parser
    from entrgi_core.data import PromptDataModule as DM
    from entrgi_core.module import GuidedDenoiser
    seen = {}

    class Probe(EntrgiCLI):
        def before_instantiate_classes(self):
            super().before_instantiate_classes()
            seen["seed"] = self._cfg().data.shuffle_seed
            raise SystemExit(0)

    with pytest.raises(SystemExit):
        Probe(GuidedDenoiser, DM, subclass_mode_model=False, save_config_callback=None, auto_configure_optimizers=False,
              args=["predict", "--config", str(config), "--sampling.seed", "3"], parser_class=_Parser)
    assert seen["seed"] == 3


# ----------------------------------------------------------------------------- smaller review items

def test_reward_model_registers_each_submodule_once(rm):
    keys = list(rm.state_dict())
    assert len(keys) == len(set(keys)) == len(dict(rm.model.named_parameters()))
    assert {name for name, _ in rm.named_children()} == {"model"}


def test_alignment_cache_follows_the_tokenizer_object(rm, dlm):
    import copy
    a = rm.aligned(dlm.tokenizer, dlm.vocab_size)
    assert rm.aligned(dlm.tokenizer, dlm.vocab_size) is a
    other = copy.deepcopy(dlm.tokenizer)
    assert rm.aligned(other, dlm.vocab_size) is not a                 # never confused by a reused id()
    del other
    import gc
    gc.collect()
    assert len(rm._aligned) == 1                                      # a freed tokenizer's entry is gone


def test_prompt_cache_is_bounded(rm, monkeypatch):
    monkeypatch.setattr(type(rm), "CACHE_SIZE", 5)
    for i in range(12):
        rm.template_length(f"prompt number {i}")
    assert len(rm._cache) == 5 and "prompt number 11" in rm._cache


def test_installing_brings_the_runtime_dependencies():
    import tomllib
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    build = " ".join(project["build-system"]["requires"])
    for name in ("setuptools", "torch", "ninja", "pybind11"):
        assert name in build
    requires = metadata.requires("entrgi") or []
    names = {r.split(";")[0].split("[")[0].split(">")[0].split("<")[0].split("=")[0].strip().lower() for r in requires
             if "extra ==" not in r}
    assert {"torch", "transformers", "lightning", "jsonargparse", "tokenizers", "safetensors"} <= names
    extras = set(metadata.metadata("entrgi").get_all("Provides-Extra") or [])
    assert {"test", "demo", "paper"} <= extras


def test_make_prints_the_two_readme_commands():
    proc = subprocess.run(["make", "-n", "demo", "test"], cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, "MAKEFLAGS": ""})
    assert proc.returncode == 0 and "pytest" in proc.stdout and "entrgi_core.demo" in proc.stdout


def test_model_sources_are_classified_without_the_network(monkeypatch, tmp_path):
    from entrgi_core.hub import check_source
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    check_source(str(tmp_path), "x")                                   # a local directory
    for name in ("gpt2", "org/model"):                                 # hub names, legacy and org/name
        with pytest.raises(FileNotFoundError, match="not in the local cache, and offline mode is set"):
            check_source(name, "x")
    for path in ("./model", "/abs/model", "a/b/c", str(tmp_path / "f.txt")):
        with pytest.raises(FileNotFoundError, match="does not exist"):
            check_source(path, "x")
