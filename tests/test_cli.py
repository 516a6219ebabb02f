"""The entrgi command line (entrgi_core.cli): configs, one-line errors, resuming and several
processes."""
import json
import re
import socket
import sys

import pytest
import yaml

from entrgi_core.errors import InputError
from tests.helpers import (
    REVIEW_PROMPTS,
    ROOT,
    cli,
    in_process_cli,
    prompts_file,
    read_jsonl,
    snapshot,
    strip,
)


def predict(config, *extra):
    return in_process_cli("predict", "--config", str(config), *extra)


PAPER = ROOT / "configs" / "paper"


PARTS = {part: sorted((PAPER / part).glob("*.yaml")) for part in ("dlm", "reward", "data", "method")}


def print_config(files, capsys, *extra):
    code, err = in_process_cli("predict", *[a for f in files for a in ("--config", str(f))], *extra, "--print_config")
    assert code == 0, err
    return yaml.safe_load(capsys.readouterr().out)


def each_part_once():
    """Every config file parsed once: the paper's base with each part in turn (the others at their
    first file), the tiny default, and the DiffusionGemma overlay. Parts set disjoint keys, so a
    part that parses here parses in every combination."""
    first = {part: paths[0] for part, paths in PARTS.items()}
    combos = [[ROOT / "configs" / "tiny.yaml"]]
    for part, paths in PARTS.items():
        for path in paths if part == "dlm" else paths[1:]:
            combos.append([PAPER / "base.yaml", *[path if p == part else first[p] for p in PARTS]])
    combos.append([PAPER / "base.yaml", ROOT / "configs" / "diffusion_gemma.yaml", first["reward"], first["data"],
                   first["method"]])
    return combos


@pytest.mark.slow
def test_predict_resumes_refuses_other_data_and_overwrites(cli_config, tmp_path):
    out = tmp_path / "out"
    assert predict(cli_config)[0] == 0
    before = snapshot(out)
    assert [r["prompt_id"] for r in read_jsonl(out / "predictions.jsonl")] == [f"p{i}" for i in range(7)]
    other = prompts_file(tmp_path / "b.jsonl", ["write a review of the museum"])
    code, err = predict(cli_config, "--data.path", str(other))
    assert code == 2 and "different data source" in err and "--overwrite true" in err and "Traceback" not in err
    assert snapshot(out) == before
    assert predict(cli_config)[0] == 0                                  # the same source resumes: nothing to do
    assert (out / "predictions.jsonl").read_bytes() == before["predictions.jsonl"]
    code, err = predict(cli_config, "--guidance", "guidance.Expectation", "--guidance.steps", "2")
    assert code == 2 and "different configuration" in err
    assert predict(cli_config, "--data.path", str(other), "--overwrite", "true")[0] == 0
    recs = read_jsonl(out / "predictions.jsonl")
    assert [r["prompt"] for r in recs] == ["write a review of the museum"]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["prompts"] == 1 and summary["config"]["data"]["prompts"] == 1
    assert summary["vocabulary"]["exact"] > 0 and summary["vocabulary"]["coverage"] > 0.95


@pytest.mark.slow
def test_a_prompt_over_the_limit_is_refused_and_nothing_written_changes(cli_config, tmp_path):
    out = tmp_path / "out"
    assert predict(cli_config)[0] == 0
    before = snapshot(out)
    long = prompts_file(tmp_path / "long.jsonl", ["write a review of the hotel", " ".join(["great"] * 3000)])
    code, err = predict(cli_config, "--data.path", str(long), "--overwrite", "true")
    assert code == 2 and "diffusion LM allows 128 positions" in err and "ids 'p1'" in err
    assert "Traceback" not in err and "IndexError" not in err
    assert snapshot(out) == before


def test_bad_input_is_one_line_before_any_model_loads(cli_config, tmp_path, capsys):
    for extra, says in ((["--trainer.devices", "999"], "--trainer.devices 999"),
                        (["--data.path", str(tmp_path / "nope.jsonl")], "prompt file not found"),
                        (["--guidance.steps", "-1"], "EntRGi: steps (M) must be an integer >= 0, got -1"),
                        (["--sampling.top_p", "2"], "DenoiseConfig: top_p must lie in (0, 1], got 2.0"),
                        (["--guidance", "guidance.EntRGI"], "Did you mean 'guidance.EntRGi'")):
        code, err = predict(cli_config, *extra)
        lines = [ln for ln in err.splitlines() if ln.startswith("entrgi: error")]
        assert code == 2 and len(lines) == 1 and says in lines[0], (extra, err)
        assert "Loading weights" not in capsys.readouterr().err and "Namespace(" not in err
    assert not (tmp_path / "out").exists()                              # nothing was written
    code, err = predict(cli_config, "--guidance", "guidance.EntRGI")
    assert "guidance.NoGuidance" in err and "--trainer.accelerator" not in err   # known classes, no usage wall


def test_an_unknown_model_name_costs_one_connection_attempt(cli_config, monkeypatch):
    from entrgi_core import hub

    attempts = []

    def refuse(address, *a, **k):
        attempts.append(address)
        raise OSError("no network in this test")

    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(hub, "_REACHABLE", {})
    for path, says in (("/no/such/model", "'/no/such/model' does not exist"),
                       ("someone/no-such-model", "not a local directory and not in the local cache"),
                       ("someone/other-model", "cannot be reached")):
        code, err = predict(cli_config, "--dlm.init_args.path", path)
        assert code == 2 and says in err and "MaskedLM path" in err and "Union" not in err
    assert len(attempts) == 1                          # one attempt, remembered; local paths try none
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    code, err = predict(cli_config, "--dlm.init_args.path", "someone/third-model")
    assert code == 2 and "offline mode is set" in err and len(attempts) == 1


def test_errors_that_are_not_bad_input_keep_their_traceback(cli_config, monkeypatch):
    from entrgi_core import sampler

    def broken(*a, **k):
        raise RuntimeError("CUDA out of memory (simulated)")

    monkeypatch.setattr(sampler, "denoise_steps", broken)
    with pytest.raises(RuntimeError, match="out of memory"):
        predict(cli_config)
    from entrgi_core.cli import user_error
    wrapped = ValueError("Does not validate against any of the Union subtypes")
    wrapped.__cause__ = InputError("EntRGi: steps (M) must be an integer >= 0")
    assert isinstance(user_error(wrapped), InputError) and user_error(ValueError("a bug")) is None


def test_help_names_the_commands(capsys):
    code, _ = in_process_cli("--help")
    assert code == 0 and "entrgi predict --config" in capsys.readouterr().out


def test_paper_parts_cover_the_paper_setups():
    names = {part: {p.stem for p in paths} for part, paths in PARTS.items()}
    assert names == {"dlm": {"dream7b", "llada8b"}, "reward": {"skywork0p6b", "skywork1p7b", "skywork4b"},
                     "data": {"rmbench", "judgebench", "rewardbench2"},
                     "method": {"entrgi", "aps", "expectation", "bon"}}


def test_each_part_is_parsed():
    seen = {f for combo in each_part_once() for f in combo}
    assert seen == {*(p for paths in PARTS.values() for p in paths), PAPER / "base.yaml", ROOT / "configs" / "tiny.yaml",
                    ROOT / "configs" / "diffusion_gemma.yaml"}
    def leaves(tree, prefix=()):
        for key, value in tree.items():
            yield from leaves(value, prefix + (key,)) if isinstance(value, dict) and key != "init_args" else [prefix + (key,)]

    owner = {}                                          # parts of different kinds set different settings
    for part, paths in PARTS.items():
        for path in paths:
            for leaf in leaves(yaml.safe_load(path.read_text())):
                assert owner.setdefault(leaf, part) == part, (leaf, part, owner[leaf])


@pytest.mark.parametrize("files", each_part_once(), ids=lambda fs: "+".join(f.stem for f in fs[1:]) or fs[0].stem)
def test_every_documented_config_parses(files, capsys, monkeypatch):
    """Class paths resolve and values are valid, without loading any weights."""
    import guidance as guidance_pkg
    from entrgi_core import DenoiseConfig

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


def test_the_cli_ties_the_slice_to_the_sampling_seed(cli_config, capsys, monkeypatch):
    from entrgi_core.data import PromptDataModule as DM
    from entrgi_core.lightning_cli import EntrgiCLI, _Parser
    from entrgi_core.module import GuidedDenoiser

    monkeypatch.chdir(ROOT)
    assert print_config([cli_config], capsys, "--sampling.seed", "3")["data"]["shuffle_seed"] is None
    seen = {}

    class Probe(EntrgiCLI):
        def before_instantiate_classes(self):
            super().before_instantiate_classes()
            seen["seed"] = self._cfg().data.shuffle_seed
            raise SystemExit(0)

    with pytest.raises(SystemExit):
        Probe(GuidedDenoiser, DM, subclass_mode_model=False, save_config_callback=None, auto_configure_optimizers=False,
              args=["predict", "--config", str(cli_config), "--sampling.seed", "3"], parser_class=_Parser)
    assert seen["seed"] == 3


@pytest.mark.slow
def test_cli_two_processes_equal_one(cli_config, tmp_path):
    cli("predict", "--config", str(cli_config), "--output_dir", str(tmp_path / "one"))
    cli("predict", "--config", str(cli_config), "--output_dir", str(tmp_path / "two"),
        "--trainer.devices", "2", "--trainer.strategy", "ddp")
    one = read_jsonl(tmp_path / "one" / "predictions.jsonl")
    assert [r["prompt_id"] for r in one] == [f"p{i}" for i in range(len(REVIEW_PROMPTS))]
    assert strip(one) == strip(read_jsonl(tmp_path / "two" / "predictions.jsonl"))


@pytest.mark.slow
def test_a_fresh_interpreter_prints_one_line_for_bad_input(cli_config, tmp_path):
    proc = cli("predict", "--config", str(cli_config), "--guidance.steps", "-1", check=False)
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("entrgi: error")]
    assert proc.returncode == 2 and len(lines) == 1 and "Traceback" not in proc.stderr


def test_the_front_door_lists_every_command_with_one_line_each(capsys):
    from entrgi_core.cli import COMMANDS, main
    with pytest.raises(SystemExit) as done:
        main(["--help"])
    text = capsys.readouterr().out
    assert done.value.code == 0
    for name in COMMANDS:
        assert re.search(rf"^  {name}\s+\S", text, re.M), name          # a line of its own, with what it does
    with pytest.raises(SystemExit) as done:
        main([])
    assert done.value.code == 2 and "commands:" in capsys.readouterr().out
    with pytest.raises(SystemExit) as done:
        main(["predcit", "--config", "x.yaml"])
    assert done.value.code == 2
    assert "unknown command 'predcit'. Did you mean 'predict'? The commands are: predict, fit, compare, diagnose, serve" \
        in capsys.readouterr().err


@pytest.mark.slow
def test_the_front_door_answers_in_a_fresh_interpreter_without_torch():
    """`entrgi --help` imports no torch, lightning or transformers and takes well under 2 s of CPU."""
    import subprocess
    import sys as _sys
    code = ("import resource, sys; from entrgi_core.cli import main\n"
            "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
            "heavy = [m for m in ('torch', 'lightning', 'transformers') if m in sys.modules]\n"
            "r = resource.getrusage(resource.RUSAGE_SELF)\n"
            "print('HEAVY', heavy, 'CPU', r.ru_utime + r.ru_stime)")
    out = subprocess.run([_sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True).stdout
    line = next(ln for ln in out.splitlines() if ln.startswith("HEAVY"))
    assert "HEAVY [] CPU" in line and float(line.rsplit(" ", 1)[1]) < 2.0, line


# ----------------------------------------------------------------------------- one run per output directory


def _hold(out, command):
    """A live process holding ``out`` as ``command`` (the lock is an OS lock: it takes another process)."""
    import subprocess
    import sys as _sys
    code = (f"from entrgi_core.run_lock import RunLock; import time; held = RunLock({str(out)!r}, {command!r}); "
            "held.acquire(); "
            "print('held', flush=True); time.sleep(120)")
    proc = subprocess.Popen([_sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, cwd=ROOT)
    assert proc.stdout.readline().strip() == "held"
    return proc


@pytest.mark.slow
def test_a_run_on_a_held_directory_is_refused_and_a_killed_holder_blocks_nothing(cli_config, tmp_path):
    import signal
    import socket

    from entrgi_core.run_lock import LOCK, OWNER, RunLock
    out = tmp_path / "out"
    proc = _hold(out, "entrgi fit")
    try:
        with pytest.raises(InputError, match=re.escape(f"{out} is in use by another live run (entrgi fit, pid "
                                                       f"{proc.pid} on host {socket.gethostname()}, since ")):
            RunLock(out, "entrgi predict").acquire()
        code, err = in_process_cli("predict", "--config", str(cli_config))           # the same output_dir
        assert code == 2 and f"is in use by another live run (entrgi fit, pid {proc.pid}" in err
        assert sorted(p.name for p in out.iterdir()) == sorted([LOCK, OWNER])     # nothing written
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert (out / OWNER).exists()                               # the killed run could not tidy up ...
    code, err = in_process_cli("predict", "--config", str(cli_config))            # ... and blocks nothing
    assert code == 0, err
    assert (out / "predictions.jsonl").exists() and not (out / OWNER).exists() and not (out / LOCK).exists()


def test_a_lock_made_folder_is_taken_away_and_a_released_lock_is_free(tmp_path):
    from entrgi_core.run_lock import RunLock
    out = tmp_path / "new" / "out"
    lock = RunLock(out, "entrgi predict")
    lock.acquire()
    assert lock.held and json.loads((out / ".entrgi-run.json").read_text())["command"] == "entrgi predict"
    lock.release()
    assert not out.exists() and (tmp_path / "new").exists()     # only the folder it made
    (tmp_path / "kept").mkdir()
    (tmp_path / "kept" / "a.txt").write_text("x")
    kept = RunLock(tmp_path / "kept", "entrgi fit")
    kept.acquire()
    kept.release()
    assert sorted(p.name for p in (tmp_path / "kept").iterdir()) == ["a.txt"]


def test_predict_with_a_baseline_summarises_the_gain_over_best_of_n(cli_config, tmp_path):
    out = tmp_path / "with-baseline"
    code, err = in_process_cli("predict", "--config", str(cli_config), "--baseline", "true", "--output_dir", str(out),
                               "--judges+", "entrgi_core.tinyworld.OracleJudge")
    assert code == 0, err
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["gain_over_best_of_n"]) == {"reward", "oracle"} and summary["best_of_n_forward_equivalents"] > 0
    recs = [json.loads(x) for x in (out / "predictions.jsonl").read_text().splitlines()]
    assert all(r["gain_over_best_of_n"]["reward"] == pytest.approx(r["best_reward"] - r["best_of_n"]["reward"])
               for r in recs)
    assert summary["config"]["baseline"] is True


# ----------------------------------------------------------------------------- the allocator setting

_MALLINFO = """
import ctypes, os, sys
from entrgi_core.allocator import keep_freed_memory
print(keep_freed_memory())
class Info(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]
libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype, libc.malloc.restype, libc.malloc.argtypes = Info, ctypes.c_void_p, [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
before = libc.mallinfo2().hblkhd
block = libc.malloc(256 << 20)                  # 256 MiB, as a large N x V buffer
print("MMAPPED", libc.mallinfo2().hblkhd - before >= 256 << 20)
libc.free(block)
print("KEPT", libc.mallinfo2().arena >= 256 << 20)
"""


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's allocator")
def test_keep_freed_memory_serves_large_blocks_from_the_heap_and_can_be_turned_off():
    import os as _os
    import subprocess
    runs = {}
    for value in ("1", "0"):
        env = dict(_os.environ, ENTRGI_KEEP_FREED_MEMORY=value)
        out = subprocess.run([sys.executable, "-c", _MALLINFO], capture_output=True, text=True, cwd=ROOT,
                             env=env, check=True).stdout.splitlines()
        runs[value] = out
    said, mmapped, kept = runs["1"]
    assert said.startswith("glibc keeps freed blocks up to 1024 MiB") and mmapped == "MMAPPED False" and kept == "KEPT True"
    said, mmapped, kept = runs["0"]
    assert said == "not set: ENTRGI_KEEP_FREED_MEMORY=0" and mmapped == "MMAPPED True" and kept == "KEPT False"


def test_keep_freed_memory_refuses_a_bad_setting_before_any_work(cli_config, monkeypatch, capsys):
    from entrgi_core import allocator
    monkeypatch.setenv("ENTRGI_KEEP_FREED_MEMORY", "yes")
    monkeypatch.setattr(allocator.ctypes, "CDLL", lambda *a, **k: pytest.fail("mallopt called on a bad setting"))
    with pytest.raises(ValueError, match="ENTRGI_KEEP_FREED_MEMORY must be 0 .* or 1 .*, got 'yes'"):
        allocator.keep_freed_memory()
    code, err = predict(cli_config)
    lines = [ln for ln in err.splitlines() if ln.startswith("entrgi: error")]
    assert code == 2 and len(lines) == 1 and "ENTRGI_KEEP_FREED_MEMORY must be 0" in lines[0], err
    monkeypatch.setenv("ENTRGI_KEEP_FREED_MEMORY", "0")
    assert allocator.keep_freed_memory() == "not set: ENTRGI_KEEP_FREED_MEMORY=0"      # and no mallopt call
