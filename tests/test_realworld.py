"""The real world (entrgi_core.realworld): the build pipeline end to end at a test's budget on
stand-in parts of the same formats (a tiny BERT, a few rated sentences, a tiny character LM in
Keras's layout), caching and a killed build, pinned hashes, clear errors for a world that is not
built, and the held-out judges."""
import json

import pytest
import torch

from entrgi_core import DenoiseConfig, InputError, MaskedLM, generate, realworld
from entrgi_core.errors import ScoreError
from entrgi_core.realworld import build as builder
from entrgi_core.realworld.charlm import CharLM
from entrgi_core.realworld.judges import FluencyJudge, GrammarJudge, VaderJudge
from entrgi_core.realworld.parts import PARTS, fetch, sha256
from rewards import HFRewardModel
from tests.helpers import TINY_WORLD_BUDGET as BUDGET
from tests.helpers import save_tiny_world_parts, tiny_charlm

@pytest.fixture(scope="module")
def parts(tmp_path_factory):
    return save_tiny_world_parts(tmp_path_factory.mktemp("parts"))


@pytest.fixture(scope="module")
def world(parts, tmp_path_factory):
    root = tmp_path_factory.mktemp("home") / "realworld-test"
    builder.build(builder.Budget(**BUDGET), root=root, parts=parts)
    return root


def test_the_build_makes_a_world_whose_models_load_and_generate(world, parts):
    info = json.loads((world / "world.json").read_text())
    assert set(info["stages"]) == {"parts", "data", "rm", "dlm", "card"}
    split = json.loads((world / "data" / "split.json").read_text())
    assert split["train"] + split["heldout"] == 80 and split["seed"] == 0
    held = {json.loads(x)["id"] for x in (world / "data" / "heldout.jsonl").read_text().splitlines()}
    prompts = [json.loads(x) for x in (world / "data" / "prompts.jsonl").read_text().splitlines()]
    assert prompts and all(p["id"] in held and p["prompt"] and p["continuation"] for p in prompts)
    rm = HFRewardModel(str(world / "rm"))                          # its own forward agrees (checked on load)
    from transformers import BertModel

    package = BertModel.from_pretrained(parts / "minilm").state_dict()
    own = rm.model.bert.state_dict()
    assert all(torch.equal(own[k], v) for k, v in package.items() if not k.startswith("pooler"))   # bit for bit
    dlm = MaskedLM(str(world / "dlm"))
    assert dlm.vocab_size == rm.embedding_table.shape[0]           # one vocabulary
    res = generate(dlm, [prompts[0]["prompt"]], reward=rm, config=DenoiseConfig(steps=4, max_new_tokens=4,
                                                                                num_samples=2))
    assert res.rewards.shape == (1, 2)
    metrics = json.loads((world / "dlm" / "metrics.json").read_text())
    assert metrics["steps"] == 3 and metrics["heldout_masked_ce"] > 0 and metrics["unigram_ce"] > 0
    card = json.loads((world / "card" / "card.json").read_text())
    assert set(card["samples"]) == {"human (held-out)", "dLLM, unguided", "unigram sampler"}


def test_a_second_call_returns_at_once_and_changes_nothing(world, parts, capsys):
    before = {p: p.stat().st_mtime_ns for p in world.rglob("*")}
    builder.build(builder.Budget(**BUDGET), root=world, parts=parts)
    assert "the real world is built" in capsys.readouterr().out
    assert {p: p.stat().st_mtime_ns for p in world.rglob("*")} == before


def test_a_killed_build_leaves_no_world_and_the_next_call_finishes_it(parts, tmp_path, monkeypatch):
    root = tmp_path / "realworld-test"

    def killed(tmp, *args):
        (tmp / "model.safetensors").write_bytes(b"half")           # a partial file, then the kill
        raise KeyboardInterrupt

    monkeypatch.setattr(builder, "make_dlm", killed)
    with pytest.raises(KeyboardInterrupt):
        builder.build(builder.Budget(**BUDGET), root=root, parts=parts)
    assert not (root / "world.json").exists() and not (root / "dlm").exists()
    assert (root / "rm" / "stage.json").exists()                      # finished stages are kept
    rm_made = (root / "rm" / "stage.json").stat().st_mtime_ns
    monkeypatch.undo()
    builder.build(builder.Budget(**BUDGET), root=root, parts=parts)
    assert (root / "world.json").exists() and (root / "rm" / "stage.json").stat().st_mtime_ns == rm_made
    MaskedLM(str(root / "dlm"))


def test_a_world_that_is_not_built_is_one_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("ENTRGI_HOME", str(tmp_path))
    for path in (realworld.dlm_path, realworld.rm_path):
        with pytest.raises(InputError, match="the real world is not built .*make real-world"):
            path()


def test_a_tampered_part_is_refused_with_both_hashes(tmp_path):
    part = next(p for p in PARTS if p.name == "charlm")
    folder = tmp_path / "charlm"
    folder.mkdir()
    for name, _ in part.files.values():
        (folder / name).write_bytes(b"not the pinned file")
    expected = part.files["textgenrnn-2.0.0/textgenrnn/textgenrnn_weights.hdf5"][1]
    with pytest.raises(InputError) as bad:
        fetch(part, tmp_path)                                          # already there: checked, not downloaded
    assert expected in str(bad.value) and sha256(folder / "textgenrnn_weights.hdf5") in str(bad.value)


@pytest.mark.parametrize("judge", [VaderJudge, GrammarJudge, "fluency"])
def test_judges_are_deterministic_and_clear_about_bad_input(judge, parts):
    j = FluencyJudge(weights=str(parts / "charlm")) if judge == "fluency" else judge()
    texts = ["the hotel was great and the staff were friendly .", "it was bad", ""]
    first = j.score_text(["p"] * 3, texts)
    assert torch.equal(first, j.score_text(["p"] * 3, texts)) and torch.isfinite(first).all()
    assert float(first[2]) == j.empty                                 # nothing to judge: the judge's worst
    with pytest.raises(ScoreError, match="are not strings"):
        j.score_text(["p"], [None])


def test_judges_read_what_they_claim():
    vader = VaderJudge().score_text(["p", "p"], ["what a wonderful, lovely day", "a horrible, awful mess"])
    assert vader[0] > 0.5 > -0.5 > vader[1]
    grammar = GrammarJudge().score_text(["p", "p"], ["The room was clean.", "teh rooom were cleen and and"])
    assert grammar[0] > grammar[1]


def test_the_char_lm_reads_keras_cudnn_weights_as_keras_does(tmp_path):
    """Keras's CuDNN layout (per gate: input kernel transposed in column-major order, recurrent
    kernel transposed, two biases) gives the same model as its plain layout."""
    import h5py
    import numpy as np

    tiny_charlm(tmp_path / "plain")
    plain = CharLM.load(tmp_path / "plain" / "textgenrnn_weights.hdf5", tmp_path / "plain" / "textgenrnn_vocab.json")
    (tmp_path / "cudnn").mkdir()
    vocab = (tmp_path / "plain" / "textgenrnn_vocab.json").read_text()
    (tmp_path / "cudnn" / "textgenrnn_vocab.json").write_text(vocab)
    with h5py.File(tmp_path / "plain" / "textgenrnn_weights.hdf5") as src, \
            h5py.File(tmp_path / "cudnn" / "textgenrnn_weights.hdf5", "w") as dst:
        def copy(name, obj):
            if not isinstance(obj, h5py.Dataset):
                return
            value = obj[()]
            if name.startswith("rnn_") and name.endswith("/kernel:0"):         # invert Keras's conversion
                value = np.hstack([b.reshape(b.shape[::-1], order="F").T for b in np.hsplit(value, 4)])
            elif name.startswith("rnn_") and name.endswith("recurrent_kernel:0"):
                value = np.hstack([b.T for b in np.hsplit(value, 4)])
            elif name.startswith("rnn_") and name.endswith("bias:0"):
                value = np.concatenate([value, np.zeros_like(value)])
            dst.create_dataset(name, data=value)
        src.visititems(copy)
    cudnn = CharLM.load(tmp_path / "cudnn" / "textgenrnn_weights.hdf5", tmp_path / "cudnn" / "textgenrnn_vocab.json")
    text = ["the room was clean and quiet ."]
    assert cudnn.log_prob(text) == pytest.approx(plain.log_prob(text), rel=1e-5)
