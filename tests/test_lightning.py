"""trainer.predict with GuidedDenoiser, PromptDataModule and the resumable JSONL writer; the CLI."""
import json
import os
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import yaml

from entrgi_core import DenoiseConfig
from entrgi_core.data import PromptDataModule, text_id
from entrgi_core.module import GuidedDenoiser
from entrgi_core.writer import JsonlPredictionWriter, read_jsonl
from guidance import EntRGi, NoGuidance

ROOT = Path(__file__).resolve().parents[1]
PROMPTS = [f"write a review of {s}" for s in ["the hotel", "the zoo", "the park", "this phone", "the museum",
                                               "the beach", "this book"]]
CFG = DenoiseConfig(steps=4, max_new_tokens=8, num_samples=2)


def trainer(callbacks, **kw):
    return L.Trainer(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                     enable_progress_bar=False, enable_model_summary=False, inference_mode=False,
                     callbacks=callbacks, **kw)


def strip(records):
    """Records without timings, and with float noise (batch-size dependent rounding) rounded off."""
    def rounded(v):
        if isinstance(v, float):
            return round(v, 4)
        if isinstance(v, list):
            return [rounded(x) for x in v]
        if isinstance(v, dict):
            return {k: rounded(x) for k, x in v.items()}
        return v
    return [{k: rounded(v) for k, v in r.items() if k != "seconds"} for r in records]


def test_predict_writes_sorted_records_and_summary(dlm, rm, tmp_path):
    module = GuidedDenoiser(dlm, rm, EntRGi(steps=1), CFG)
    dm = PromptDataModule(prompts=PROMPTS, batch_size=3)
    trainer([JsonlPredictionWriter(str(tmp_path))]).predict(module, datamodule=dm, return_predictions=False)
    recs = read_jsonl(tmp_path / "predictions.jsonl")
    assert [r["prompt_id"] for r in recs] == sorted(text_id(p) for p in PROMPTS)
    for r in recs:
        assert len(r["responses"]) == 2 and len(r["rewards"]) == 2 and r["method"] == "entrgi" and r["seed"] == 0
        assert r["best_reward"] == max(r["rewards"]) and r["best_response"] == r["responses"][r["best_index"]]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["prompts"] == len(PROMPTS)
    assert abs(summary["mean_top1_reward"] - sum(r["best_reward"] for r in recs) / len(recs)) < 1e-9
    assert len(summary["mean_entropy_weight_by_step"]) == CFG.steps
    assert summary["config"]["guidance"]["steps"] == 1 and summary["versions"]["torch"]
    total = summary["compute"]["total"]
    assert total["dlm_forwards"] == sum(r["compute"]["dlm_forwards"] for r in recs) == len(PROMPTS) * 2 * CFG.steps
    assert total["rm_backwards"] == len(PROMPTS) * 2 * CFG.steps and total["seconds"] > 0
    assert summary["compute"]["per_prompt"]["flops"] == pytest.approx(total["flops"] / len(PROMPTS))
    assert not list(tmp_path.glob("shard-*"))


class Crash(L.Callback):
    def on_predict_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        if batch_idx == 1:
            raise KeyboardInterrupt("killed after two batches")


def test_killed_run_resumes_without_losing_or_duplicating(dlm, rm, tmp_path):
    module = GuidedDenoiser(dlm, rm, EntRGi(steps=1), CFG)
    with pytest.raises(BaseException):
        trainer([JsonlPredictionWriter(str(tmp_path)), Crash()]).predict(
            module, datamodule=PromptDataModule(prompts=PROMPTS, batch_size=2), return_predictions=False)
    shard = read_jsonl(tmp_path / "shard-rank0.jsonl")
    assert len(shard) == 4                               # two batches were written before the kill
    dm = PromptDataModule(prompts=PROMPTS, batch_size=2)
    trainer([JsonlPredictionWriter(str(tmp_path))]).predict(module, datamodule=dm, return_predictions=False)
    assert len(dm.remaining()) == len(PROMPTS) - 4       # the rerun only did what was missing
    recs = read_jsonl(tmp_path / "predictions.jsonl")
    assert sorted(r["prompt_id"] for r in recs) == sorted(text_id(p) for p in PROMPTS)
    by_id = {r["prompt_id"]: r for r in recs}
    for old in shard:
        assert by_id[old["prompt_id"]] == old            # earlier records unchanged
    # a full uninterrupted run gives the same records
    fresh = tmp_path / "fresh"
    trainer([JsonlPredictionWriter(str(fresh))]).predict(module, datamodule=PromptDataModule(prompts=PROMPTS),
                                                         return_predictions=False)
    assert strip(read_jsonl(fresh / "predictions.jsonl")) == strip(recs)


def test_other_config_in_output_dir_is_refused_unless_overwrite(dlm, rm, tmp_path):
    dm = lambda: PromptDataModule(prompts=PROMPTS[:2])  # noqa: E731
    trainer([JsonlPredictionWriter(str(tmp_path))]).predict(GuidedDenoiser(dlm, rm, NoGuidance(), CFG),
                                                            datamodule=dm(), return_predictions=False)
    before = (tmp_path / "predictions.jsonl").read_text()
    other = GuidedDenoiser(dlm, rm, EntRGi(steps=1), CFG)
    with pytest.raises(RuntimeError, match="different configuration.*overwrite"):
        trainer([JsonlPredictionWriter(str(tmp_path))]).predict(other, datamodule=dm(), return_predictions=False)
    assert (tmp_path / "predictions.jsonl").read_text() == before   # nothing lost
    trainer([JsonlPredictionWriter(str(tmp_path), overwrite=True)]).predict(other, datamodule=dm(),
                                                                            return_predictions=False)
    assert all(r["method"] == "entrgi" for r in read_jsonl(tmp_path / "predictions.jsonl"))


def test_guidance_under_inference_mode_is_a_clear_error(dlm, rm, tmp_path):
    t = L.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False, inference_mode=True)
    with pytest.raises(RuntimeError, match="inference_mode=False"):
        t.predict(GuidedDenoiser(dlm, rm, EntRGi(steps=1), CFG), datamodule=PromptDataModule(prompts=PROMPTS[:1]))
    # unguided prediction is fine under inference mode
    out = t.predict(GuidedDenoiser(dlm, rm, NoGuidance(), CFG), datamodule=PromptDataModule(prompts=PROMPTS[:1]))
    assert len(out[0]) == 1


def test_module_needs_reward_for_guidance(dlm):
    with pytest.raises(ValueError, match="needs a reward model"):
        GuidedDenoiser(dlm, None, EntRGi(), CFG)


# ----------------------------------------------------------------------------- data

def write(path: Path, text: str) -> str:
    path.write_text(text)
    return str(path)


@pytest.mark.parametrize("name,text,kwargs,message", [
    ("p.jsonl", "", {}, "holds no records"),
    ("p.jsonl", '{"prompt": "a"}\n{"prompt": \n', {}, "p.jsonl:2: not a JSON line"),
    ("p.jsonl", '{"prompt": "a"}\n{"text": "b"}\n', {}, "record 2 has no field 'prompt'"),
    ("p.jsonl", '{"prompt": "a"}\n{"prompt": "  "}\n', {}, "record 2 has an empty prompt"),
    ("p.jsonl", '{"prompt": "a", "id": 1}\n{"prompt": "b", "id": 1}\n', {"id_field": "id"}, "same id '1'"),
    ("p.jsonl", '{"prompt": "a"}\n{"prompt": "a"}\n', {}, "same prompt text"),
    ("p.jsonl", '[1, 2]\n', {}, "expected a JSON object"),
    ("p.csv", "prompt,id\n,3\n", {}, "record 1 has an empty prompt"),
    ("p.txt", "hello\n", {}, "expected a .jsonl or .csv"),
])
def test_bad_prompt_files(tmp_path, name, text, kwargs, message):
    with pytest.raises(ValueError, match=message):
        PromptDataModule(path=write(tmp_path / name, text), **kwargs)


def test_undecodable_bytes(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_bytes(b'{"prompt": "caf\xe9"}\n')
    with pytest.raises(ValueError, match="not UTF-8 text"):
        PromptDataModule(path=str(path))


def test_prompt_sources_ids_subset_and_limit(tmp_path):
    with pytest.raises(FileNotFoundError, match="prompt file not found"):
        PromptDataModule(path=str(tmp_path / "missing.jsonl"))
    with pytest.raises(ValueError, match="exactly one of"):
        PromptDataModule()
    csv_dm = PromptDataModule(path=write(tmp_path / "p.csv", "question,qid\nhi there,q1\nbye,q2\n"),
                              field="question", id_field="qid")
    assert [it["id"] for it in csv_dm.items] == ["q1", "q2"]
    jl = "".join(json.dumps({"prompt": f"p{i}"}) + "\n" for i in range(20))
    a = PromptDataModule(path=write(tmp_path / "p.jsonl", jl), subset_size=5, shuffle_seed=1, limit=3)
    b = PromptDataModule(path=str(tmp_path / "p.jsonl"), subset_size=5, shuffle_seed=1, limit=3)
    assert a.items == b.items and len(a.items) == 3
    assert a.items[0]["id"] == text_id(a.items[0]["prompt"])


# ----------------------------------------------------------------------------- CLI

def cli(*args, cwd=ROOT, env_extra=None, check=True):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", **(env_extra or {})}
    proc = subprocess.run([sys.executable, "-m", "entrgi_core.cli", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)
    if check and proc.returncode != 0:
        raise AssertionError(f"entrgi {' '.join(args)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
    return proc


@pytest.fixture
def cli_config(tmp_path, tiny_dlm_path, tiny_rm_path):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": p, "id": f"p{i}"}) + "\n" for i, p in enumerate(PROMPTS)))
    cfg = {
        "dlm": {"class_path": "entrgi_core.models.MaskedLM", "init_args": {"path": str(tiny_dlm_path)}},
        "reward": {"class_path": "rewards.hf.HFRewardModel", "init_args": {"path": str(tiny_rm_path)}},
        "guidance": {"class_path": "guidance.EntRGi", "init_args": {"steps": 1}},
        "sampling": {"steps": 4, "max_new_tokens": 8, "num_samples": 2},
        "data": {"path": str(prompts), "id_field": "id", "batch_size": 2},
        "trainer": {"accelerator": "cpu", "devices": 1},
    }
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_cli_two_processes_equal_one(cli_config, tmp_path):
    cli("predict", "--config", str(cli_config), "--output_dir", str(tmp_path / "one"))
    cli("predict", "--config", str(cli_config), "--output_dir", str(tmp_path / "two"),
        "--trainer.devices", "2", "--trainer.strategy", "ddp")
    one = read_jsonl(tmp_path / "one" / "predictions.jsonl")
    two = read_jsonl(tmp_path / "two" / "predictions.jsonl")
    assert [r["prompt_id"] for r in one] == [f"p{i}" for i in range(len(PROMPTS))]
    assert strip(one) == strip(two)


def test_cli_overrides_and_bad_input(cli_config, tmp_path):
    out = tmp_path / "o"
    cli("predict", "--config", str(cli_config), "--output_dir", str(out), "--guidance", "guidance.Expectation",
        "--guidance.steps", "2")
    assert {r["method"] for r in read_jsonl(out / "predictions.jsonl")} == {"expectation"}
    bad = cli("predict", "--config", str(cli_config), "--output_dir", str(out), check=False)
    assert bad.returncode != 0 and "different configuration" in bad.stderr
    too_many = cli("predict", "--config", str(cli_config), "--trainer.devices", "999", check=False)
    assert too_many.returncode != 0 and "--trainer.devices 999" in too_many.stderr
    missing = cli("predict", "--config", str(cli_config), "--data.path", str(tmp_path / "nope.jsonl"), check=False)
    assert missing.returncode != 0 and "prompt file not found" in missing.stderr
    assert "Loading weights" not in missing.stderr        # failed before any model was loaded
    helptext = cli("--help").stdout
    assert "entrgi predict --config" in helptext


PAPER = ROOT / "configs" / "paper"
PARTS = {part: sorted((PAPER / part).glob("*.yaml")) for part in ("dlm", "reward", "data", "method")}
COMBOS = [[PAPER / "base.yaml", d, r, x, m] for d in PARTS["dlm"] for r in PARTS["reward"] for x in PARTS["data"]
          for m in PARTS["method"]]


def test_paper_parts_cover_the_paper_setups():
    names = {part: {p.stem for p in paths} for part, paths in PARTS.items()}
    assert names == {"dlm": {"dream7b", "llada8b"}, "reward": {"skywork0p6b", "skywork1p7b", "skywork4b"},
                     "data": {"rmbench", "judgebench", "rewardbench2"},
                     "method": {"entrgi", "aps", "expectation", "bon"}}
    assert len(COMBOS) == 72


def print_config(files, capsys, *extra):
    from entrgi_core.cli import main
    args = ["predict"] + [a for f in files for a in ("--config", str(f))] + list(extra) + ["--print_config"]
    with pytest.raises(SystemExit) as done:
        main(args)
    assert done.value.code in (0, None), capsys.readouterr().err
    return yaml.safe_load(capsys.readouterr().out)


GEMMA = [PAPER / "base.yaml", ROOT / "configs" / "diffusion_gemma.yaml", PAPER / "reward" / "skywork1p7b.yaml",
         PAPER / "data" / "rmbench.yaml", PAPER / "method" / "entrgi.yaml"]


@pytest.mark.parametrize("files", [[ROOT / "configs" / "tiny.yaml"]] + COMBOS + [GEMMA],
                         ids=lambda fs: "+".join(f.stem for f in fs[1:]) or fs[0].stem)
def test_every_documented_combination_parses(files, capsys, monkeypatch):
    """Class paths resolve and values are valid, without loading any weights."""
    import guidance as guidance_pkg

    monkeypatch.chdir(ROOT)
    cfg = print_config(files, capsys)
    DenoiseConfig(**cfg["sampling"])
    g = cfg["guidance"]
    getattr(guidance_pkg, g["class_path"].rsplit(".", 1)[1])(**(g.get("init_args") or {}))
    assert cfg["dlm"]["class_path"].rsplit(".", 1)[1] in ("DreamLM", "LLaDALM", "MaskedLM", "DiffusionGemmaLM")
    if "DiffusionGemma" in cfg["dlm"]["class_path"]:
        assert cfg["sampling"]["top_p"] == 1.0
    assert cfg["reward"]["class_path"].endswith("HFRewardModel")
    if files[0].name == "base.yaml":
        assert cfg["data"]["slicing"] == "hf" and cfg["data"]["subset_size"] == 64
        assert cfg["data"]["batch_size"] == (1 if "llada" in files[1].stem else 4)
