"""The experiment tools (entrgi_core.tools): diagnose and compare."""
import pytest
import torch

from entrgi_core import DenoiseConfig
from tests.helpers import PROMPTS, make_step


def test_diagnose_on_a_linear_reward_has_the_known_answer(dlm):
    """For a reward linear in the embeddings and a position over ordinary tokens (no stop or
    special token, which would cut or drop the response), E_q[R(E[x])] = R(q @ E): the soft
    relaxation is exact (gap 0) and every gate's gradient is the gradient of the expected reward
    (cosine 1, computed exactly by enumerating the vocabulary)."""
    from entrgi_core.tools.diagnose import probe, summarize_bins
    from rewards import CallableReward

    table = dlm.model.get_input_embeddings().weight.detach()
    w = torch.randn(table.shape[1], generator=torch.Generator().manual_seed(0))
    linear = CallableReward(lambda e, keep: ((e @ w) * keep).sum(1), table, dlm.tokenizer)
    canvas = torch.tensor(dlm.tokenizer("the hotel was very great", add_special_tokens=False)["input_ids"])
    special = torch.tensor(dlm.tokenizer.all_special_ids)
    points = []
    for seed in range(4):
        phi = 3 * torch.randn(dlm.vocab_size, generator=torch.Generator().manual_seed(seed))
        phi[special] = float("-inf")
        step = make_step(dlm, linear, canvas[None].clone(), torch.tensor([0]), torch.tensor([2]))
        p = probe(step, PROMPTS[0], canvas, 2, phi, tau=0.7, samples=dlm.vocab_size, draws=2,
                  gen=torch.Generator().manual_seed(seed))
        assert abs(p["gap"]) < 1e-4
        for gate in ("soft", "ste", "entropy"):
            assert p[f"cos_{gate}"] == pytest.approx(1.0, abs=1e-4)
        points.append(p)
    assert sum(r["positions"] for r in summarize_bins(points)) == 4


def test_diagnose_records_states_and_bins_positions(dlm, rm):
    from entrgi_core.tools.diagnose import diagnose
    cfg = DenoiseConfig(steps=8, max_new_tokens=6, num_samples=1)
    points = diagnose(dlm, rm, PROMPTS[:2], cfg, positions=2, samples=64, draws=2)   # V > 64: sampled estimate
    assert len(points) == 3 * 2 * 2 and {p["step"] for p in points} == {2, 4, 6}
    assert all(0 <= p["entropy"] <= 1 for p in points)
    assert all(-1 <= p["cos_soft"] <= 1 for p in points if p["cos_soft"] is not None)
    assert any(abs(p["gap"]) > 1e-4 for p in points)    # the relaxation is not exact for a real RM


@pytest.mark.slow
def test_compare_writes_the_frontier(tmp_path, tiny_dlm_path, tiny_rm_path, capsys):
    import json as _json

    from entrgi_core.cli import main
    out = tmp_path / "cmp"
    argv = ["compare", "--seeds", "0", "1", "--budgets", "2", "4", "--guided-k", "2", "--guided-m", "1", "--smc-k", "2",
            "--prompts", "2", "--out", str(out), "--dlm.init_args.path", str(tiny_dlm_path),
            "--reward.init_args.path", str(tiny_rm_path), "--sampling.steps", "4", "--sampling.max_new_tokens", "6"]
    main(argv)
    data = _json.loads((out / "frontier.json").read_text())
    assert "[compare] seed 1" in capsys.readouterr().out
    main(argv)                                                  # the same sweep again: every point is kept, none rerun
    assert "[compare] seed" not in capsys.readouterr().out
    assert _json.loads((out / "frontier.json").read_text())["runs"] == data["runs"]
    with pytest.raises(SystemExit) as done:                     # another sweep in the same folder: refused
        main(argv[:-1] + ["5"])
    assert done.value.code == 2 and "holds points of another sweep" in capsys.readouterr().err
    assert _json.loads((out / "frontier.json").read_text())["runs"] == data["runs"]
    labels = [r["label"] for r in data["rows"]]
    assert labels[:2] == ["BoN K=2", "BoN K=4"] and "EntRGi K=2 M=1" in labels and "APS K=2 M=1" in labels
    assert {"SMC none K=2", "SMC Expectation K=2", "SMC APS K=2", "SMC EntRGi K=2"} <= set(labels)
    assert len(data["runs"]) == 2 * len(labels) and all(r["seeds"] == 2 for r in data["rows"])
    bon2, bon4 = data["rows"][0], data["rows"][1]
    assert bon4["forward_equivalents"] == pytest.approx(2 * bon2["forward_equivalents"], rel=0.05)
    assert {"j:oracle", "j:valid"} <= set(bon2)            # tiny-world prompts: the oracle and validity judge
    assert (out / "frontier.png").stat().st_size > 0 and "BoN K=4" in (out / "frontier.txt").read_text()
    assert all((out / f"frontier-{j}.png").stat().st_size > 0 for j in ("oracle", "valid"))
    assert "guide gain (RM Top@1)" in (out / "frontier.txt").read_text()
    assert {g["label"] for g in data["gains"]} == set(labels) - {"BoN K=2", "BoN K=4"}


def test_compare_and_diagnose_refuse_bad_input(capsys):
    from entrgi_core.cli import main
    for argv, message in ((["compare", "--budgets", "0"], "--budgets must be >= 1"),
                          (["compare", "--prompts", "0"], "--prompts must be >= 1"),
                          (["compare", "--smc-k", "0"], "--smc-k must be >= 1"),
                          (["compare", "--only", "Bestof"], "--only Bestof keeps no curve; the curves are: "),
                          (["compare", "--kl", "-1"], "--kl must be finite numbers >= 0, got [-1.0]"),
                          (["diagnose", "--samples", "0"], "--samples must be >= 1")):
        with pytest.raises(SystemExit) as done:
            main(argv)
        assert done.value.code == 2 and message in capsys.readouterr().err


def test_seconds_can_come_from_a_quiet_timing_pass(tmp_path, capsys):
    import json as _json

    from entrgi_core.cli import main
    from entrgi_core.tools.compare import timings
    quiet = tmp_path / "quiet"
    quiet.mkdir()
    (quiet / "runs.jsonl").write_text("".join(_json.dumps({"label": label, "seed": seed, "seconds": s}) + "\n"
                                              for label, seed, s in (("BoN K=4", 0, 2.0), ("BoN K=4", 1, 4.0),
                                                                     ("EntRGi K=4 M=3", 0, 9.0))))
    got = timings(quiet, ["BoN K=4", "EntRGi K=4 M=3"])
    assert got["BoN K=4"] == pytest.approx((3.0, 1.0)) and got["EntRGi K=4 M=3"] == (9.0, 0.0)
    with pytest.raises(SystemExit) as done:                   # a point it did not time: refused before any model loads
        main(["compare", "--budgets", "4", "8", "--only", "Best-of-N", "--seconds-from", str(quiet)])
    assert done.value.code == 2 and "has no timing of ['BoN K=8']" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["compare", "--seconds-from", str(tmp_path / "none")])
    assert "has no runs.jsonl" in capsys.readouterr().err


def test_matched_compute_reads_each_curve_at_or_below_each_budget():
    from entrgi_core.tools.compare import matched
    rows = [dict(family="Best-of-N", label="BoN K=4", k=4, top1=0.5, forward_equivalents=129),
            dict(family="Best-of-N", label="BoN K=8", k=8, top1=0.7, forward_equivalents=258),
            dict(family="SMC", label="SMC K=2", k=2, top1=0.8, forward_equivalents=120),
            dict(family="SMC", label="SMC K=4", k=4, top1=0.6, forward_equivalents=240),
            dict(family="SMC", label="SMC K=8", k=8, top1=0.99, forward_equivalents=480)]
    lines = matched(rows).splitlines()
    assert lines[3].split() == ["129", "(BoN", "K=4)", "+0.500", "[K=4]", "+0.800", "[K=2]"]
    assert lines[4].split() == ["258", "(BoN", "K=8)", "+0.700", "[K=8]", "+0.800", "[K=2]"]   # K=8 costs too much
    assert matched(rows[:2]) == ""


def test_only_keeps_an_exactly_named_curve_alone_and_prefixes_otherwise():
    from entrgi_core.tools.compare import default_methods, keeps
    methods = default_methods(budgets=(4,), guided_k=(4,), guided_m=(1, 3), smc_k=(4,))
    families = {m.family for m in methods}

    def kept(*words):
        return sorted({m.family for m in methods if keeps(list(words), m.family, families)})

    assert kept("EntRGi M=3") == ["EntRGi M=3"]                       # not "EntRGi M=3 every 2nd step"
    assert kept("EntRGi") == ["EntRGi M=1", "EntRGi M=3", "EntRGi M=3 every 2nd step", "EntRGi M=3 first half"]
    assert kept("SMC + Expectation M=1") == ["SMC + Expectation M=1"]
    assert kept("SMC + Exp") == ["SMC + Expectation M=1", "SMC + Expectation M=1 beta=0.03"]
    assert kept("Best-of-N", "APS") == ["APS M=1", "APS M=3", "Best-of-N"]


def _run(label, k, seed, top1, **judges):
    family = "Best-of-N" if label.startswith("BoN") else label.split(" K=")[0]
    return {"family": family, "label": label, "k": k, "decoding": "steps", "seed": seed, "top1": top1,
            "avg": top1, "seconds": 1.0, "forward_equivalents": 10.0 * k, "tpf": 1.0, "binary": [],
            **{f"j:{n}": v for n, v in judges.items()}}


def test_guide_and_judge_gains_are_paired_by_seed_and_flag_a_guide_only_gain():
    from entrgi_core.tools.compare import gain_table, gains
    runs = [_run("BoN K=4", 4, 0, 0.2, vader=0.5, fluency=-1.0), _run("BoN K=4", 4, 1, 0.4, vader=0.7, fluency=-1.2),
            _run("Hack K=4", 4, 0, 0.9, vader=0.4, fluency=-1.5), _run("Hack K=4", 4, 1, 1.1, vader=0.6, fluency=-1.6),
            _run("Good K=4", 4, 0, 0.3, vader=0.6, fluency=-0.9), _run("Good K=4", 4, 1, 0.5, vader=0.9, fluency=-1.0),
            _run("Lone K=8", 8, 0, 0.9, vader=0.9, fluency=-0.9)]               # no Best-of-N at K=8: no gain
    rows = {g["label"]: g for g in gains(runs)}
    assert set(rows) == {"Hack K=4", "Good K=4"}
    hack, good = rows["Hack K=4"], rows["Good K=4"]
    assert hack["gain:top1"] == pytest.approx(0.7) and hack["gain:top1_sem"] == pytest.approx(0.0, abs=1e-12)
    assert hack["gain:j:vader"] == pytest.approx(-0.1) and hack["gain:j:fluency"] == pytest.approx(-0.45)
    assert hack["flags"] == ["vader", "fluency"] and good["flags"] == []
    assert good["gain:j:vader"] == pytest.approx(0.15) and good["gain:j:vader_sem"] == pytest.approx(0.05)
    text = gain_table(list(rows.values()))
    assert "guide gain (RM Top@1)" in text and "vader gain" in text and "fluency gain" in text
    assert "flagged: Hack K=4" in text and text.count(" !") == 2
    full = [dict(r, binary=["valid"], **{"j:valid": 1.0}) for r in runs]       # a verifier at its ceiling
    assert {g["label"]: g["flags"] for g in gains(full)} == {"Hack K=4": ["vader", "fluency"], "Good K=4": []}
    falls = [dict(r, binary=["valid"], **{"j:valid": 1.0 if r["label"].startswith("BoN") else 0.75}) for r in runs]
    assert "valid" in {g["label"]: g["flags"] for g in gains(falls)}["Good K=4"]      # at the ceiling, and fell
    fails = [dict(r, binary=["valid"], **{"j:valid": 0.5 if r["label"].startswith("BoN") else 0.25}) for r in runs]
    assert "valid" in {g["label"]: g["flags"] for g in gains(fails)}["Good K=4"]


def test_gain_columns_appear_exactly_when_judges_are_given():
    from entrgi_core.tools.compare import gain_table, gains
    bare = [_run("BoN K=4", 4, 0, 0.2), _run("Good K=4", 4, 0, 0.3)]
    assert gains(bare)[0]["gain:top1"] == pytest.approx(0.1) and gain_table(gains(bare)) == ""
    judged = [_run("BoN K=4", 4, 0, 0.2, oracle=0.1), _run("Good K=4", 4, 0, 0.3, oracle=0.2)]
    assert "oracle gain" in gain_table(gains(judged))


def test_trust_region_and_strength_variants_of_each_gated_curve():
    from entrgi_core.tools.compare import default_methods
    from guidance import LinearDecay
    methods = default_methods(budgets=(4,), guided_k=(4,), guided_m=(3,), smc_k=(), kls=(0.0, 0.1),
                              strengths=("constant", "linear"))
    fams = {m.family: m for m in methods}
    assert {"EntRGi M=3", "EntRGi M=3 kl=0.1", "EntRGi M=3 LinearDecay", "EntRGi M=3 kl=0.1 LinearDecay",
            "Expectation M=3 kl=0.1"} <= set(fams)
    made = fams["EntRGi M=3 kl=0.1 LinearDecay"].make()
    assert made.kl == 0.1 and made.strength == LinearDecay() and made.steps == 3
    assert fams["EntRGi M=3"].make().settings() == type(made)(steps=3).settings()
