"""lm-evaluation-harness (entrgi_core.integrations.harness, entrgi eval, the shipped tinyworld_reviews
task): its score is generate's Top@1 read by the oracle, request for request; the ELBO orders
continuations; bad input is one line before the models load; the same task through `entrgi
serve` and lm-eval's local-completions gives the same score (slow)."""
import json
from dataclasses import replace
from types import SimpleNamespace

import pytest

lm_eval = pytest.importorskip("lm_eval")

from entrgi_core import generate  # noqa: E402
from entrgi_core.errors import InputError  # noqa: E402
from entrgi_core.integrations.harness import EntrgiLM, task_manager  # noqa: E402
from entrgi_core.tinyworld import PROMPTS, OracleJudge  # noqa: E402
from guidance import EntRGi  # noqa: E402

FAST = ["--sampling.steps", "8"]                 # 8 denoising steps for the task's 32 tokens
GEN = {"until": ["\n"], "max_gen_toks": 32, "temperature": 0.7, "do_sample": True}   # the task's generation_kwargs


def prompts(n):
    return [json.loads(line)["prompt"] for line in PROMPTS.read_text().splitlines()[:n]]


@pytest.fixture(scope="module")
def lm():
    return EntrgiLM(config="configs/tiny.yaml", overrides=FAST)


def top1(res):
    return [res.texts[b][int(res.best_index[b])] for b in range(len(res.texts))]


def test_the_shipped_task_scores_generates_top1_read_by_the_oracle(lm):
    out = lm_eval.simple_evaluate(model=lm, tasks=["tinyworld_reviews"], task_manager=task_manager(tasks=["tinyworld_reviews"]), limit=3)
    got = out["results"]["tinyworld_reviews"]
    ps = prompts(3)
    config = replace(lm.base, num_samples=4, max_new_tokens=32, temperature=0.7)
    res = generate(lm.model, ps, reward=lm.reward, config=config, prompt_ids=[0] * 3, seeds=[1234] * 3)
    oracle = OracleJudge().score_text(ps, top1(res))
    assert got["oracle,none"] == pytest.approx(float(oracle.mean()), abs=1e-6)
    assert got["sample_len"] == 3 and got["valid,none"] <= 1.0


def test_guidance_and_k_come_from_the_model_and_a_tasks_extension_overrides_them(lm):
    guided = EntrgiLM(config="configs/tiny.yaml", overrides=FAST, guidance="guidance.EntRGi", num_samples=2, seed=7)
    ps = prompts(2)
    reqs = [SimpleNamespace(args=(p, dict(GEN))) for p in ps]
    config = replace(lm.base, num_samples=2, max_new_tokens=32, temperature=0.7, seed=7)
    res = generate(lm.model, ps, reward=lm.reward, guidance=EntRGi(), config=config, prompt_ids=[0, 0])
    assert guided.generate_until(reqs) == top1(res)
    ext = [SimpleNamespace(args=(p, {**GEN, "entrgi": {"guidance": None, "num_samples": 3}})) for p in ps]
    alone = generate(lm.model, ps, reward=lm.reward, config=replace(config, num_samples=3), prompt_ids=[0, 0])
    assert guided.generate_until(ext) == top1(alone)


def test_the_elbo_orders_continuations_and_is_deterministic(lm):
    prompt = prompts(1)[0]
    good, bad = " the room was clean and the staff were kind", " kind were the staff and clean the was room"
    reqs = [SimpleNamespace(args=(prompt, good)), SimpleNamespace(args=(prompt, bad))]
    first, again = lm.loglikelihood(reqs), lm.loglikelihood(reqs)
    assert first == again and all(isinstance(g, bool) for _, g in first)
    assert first[0][0] > first[1][0] and first[0][0] < 0
    rolling = lm.loglikelihood_rolling([SimpleNamespace(args=(good,))])
    assert len(rolling) == 1 and rolling[0] < 0


def test_importing_the_model_keeps_lm_evals_own_models():
    from lm_eval.api.registry import get_model

    assert get_model("entrgi") is EntrgiLM and get_model("local-completions").__name__ == "LocalCompletionsAPI"


def test_bad_input_is_one_line(lm, tmp_path, monkeypatch):
    with pytest.raises(InputError, match=r"unknown generation kwargs \['top_k'\]"):
        lm.generate_until([SimpleNamespace(args=("hi", {**GEN, "top_k": 3}))])
    with pytest.raises(InputError, match="request 0: entrgi.steps \\(40\\) must not exceed max_tokens \\(32\\)"):
        lm.generate_until([SimpleNamespace(args=("hi", {**GEN, "entrgi": {"steps": 40}}))])
    with pytest.raises(InputError, match="empty continuation"):
        lm.loglikelihood([SimpleNamespace(args=("hi", ""))])
    with pytest.raises(InputError, match=r"unknown arguments \['temprature'\]"):
        EntrgiLM(temprature=1)
    with pytest.raises(InputError, match="num_samples must be an integer >= 1, got 'four'"):
        EntrgiLM(num_samples="four")
    with pytest.raises(InputError, match="the default guidance: entrgi.guidance 'guidance.SMC' is not allowed"):
        EntrgiLM(guidance="guidance.SMC")
    from entrgi_core.tools import evaluate

    def no_models(*a, **k):
        raise AssertionError("the models loaded before the input was checked")
    monkeypatch.setattr("entrgi_core.tools.compare.load", no_models)
    with pytest.raises(InputError, match=r"unknown task\(s\) \['tinyworld_review'\]"):
        evaluate.main(["--tasks", "tinyworld_review"])
    (tmp_path / "r.json").write_text("{}")
    with pytest.raises(InputError, match="exists; give a new path"):
        evaluate.main(["--tasks", "tinyworld_reviews", "--output", str(tmp_path / "r.json")])
    assert (tmp_path / "r.json").read_text() == "{}"


@pytest.mark.slow
def test_the_task_through_the_server_scores_what_it_scores_in_process(lm):
    """`entrgi serve` + lm-eval's own local-completions client: the same score, seed for seed."""
    import socket
    import subprocess
    import sys
    import time
    import urllib.request

    from tests.helpers import ROOT
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "entrgi_core.cli", "serve", "--config", "configs/tiny.yaml",
                             "--port", str(port), "--default-guidance", "guidance.EntRGi", *FAST], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        for _ in range(240):
            try:
                if urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1).status == 200:
                    break
            except OSError:
                time.sleep(0.5)
            assert proc.poll() is None, proc.stderr.read()[-2000:]
        served = lm_eval.simple_evaluate(
            model="local-completions", tasks=["tinyworld_reviews"], task_manager=task_manager(tasks=["tinyworld_reviews"]), limit=4,
            model_args={"model": "tiny", "base_url": f"http://127.0.0.1:{port}/v1/completions",
                        "tokenizer_backend": "none", "num_concurrent": 4})
    finally:
        proc.terminate()
        proc.wait(timeout=120)
    here = lm_eval.simple_evaluate(model=EntrgiLM(config="configs/tiny.yaml", overrides=FAST,
                                                  guidance="guidance.EntRGi"),
                                   tasks=["tinyworld_reviews"], task_manager=task_manager(tasks=["tinyworld_reviews"]), limit=4)
    a, b = served["results"]["tinyworld_reviews"], here["results"]["tinyworld_reviews"]
    assert a["oracle,none"] == pytest.approx(b["oracle,none"], abs=1e-6) and a["valid,none"] == b["valid,none"]
