"""trainer.predict with GuidedDenoiser, PromptDataModule and the resumable JSONL writer; the CLI."""
import json
from pathlib import Path

import lightning as L
import pytest

from entrgi_core import DenoiseConfig, InputError
from entrgi_core.data import PromptDataModule, text_id
from entrgi_core.module import GuidedDenoiser
from entrgi_core.writer import JsonlPredictionWriter, read_jsonl
from guidance import EntRGi, NoGuidance
from tests.helpers import REVIEW_PROMPTS as PROMPTS
from tests.helpers import prompts_file, strip, trainer

CFG = DenoiseConfig(steps=4, max_new_tokens=8, num_samples=2)


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
    with pytest.raises(InputError, match="different configuration.*overwrite"):
        trainer([JsonlPredictionWriter(str(tmp_path))]).predict(other, datamodule=dm(), return_predictions=False)
    assert (tmp_path / "predictions.jsonl").read_text() == before   # nothing lost
    trainer([JsonlPredictionWriter(str(tmp_path), overwrite=True)]).predict(other, datamodule=dm(),
                                                                            return_predictions=False)
    assert all(r["method"] == "entrgi" for r in read_jsonl(tmp_path / "predictions.jsonl"))


def test_guidance_under_inference_mode_is_a_clear_error(dlm, rm, tmp_path):
    t = L.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False, inference_mode=True)
    with pytest.raises(InputError, match="inference_mode=False"):
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


def test_guided_denoiser_checks_each_setting_once(dlm, rm, monkeypatch):
    """The plan is checked on construction and the data module's prompts in setup: predict_step runs
    neither check again."""
    calls = {"check": 0, "lengths": 0}
    original_check, original_lengths = type(dlm).check, __import__("entrgi_core.plan", fromlist=["x"]).check_prompt_lengths

    def check(self, *a, **k):
        calls["check"] += 1
        return original_check(self, *a, **k)

    def lengths(*a, **k):
        calls["lengths"] += 1
        return original_lengths(*a, **k)

    monkeypatch.setattr(type(dlm), "check", check)
    monkeypatch.setattr("entrgi_core.plan.check_prompt_lengths", lengths)
    module = GuidedDenoiser(dlm, rm, EntRGi(steps=1), CFG)
    trainer([]).predict(module, datamodule=PromptDataModule(prompts=PROMPTS, batch_size=2), return_predictions=False)
    assert calls == {"check": 1, "lengths": 1}
