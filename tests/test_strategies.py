"""One contract test over every strategy (a new strategy inherits it by being listed here): a
switched-off strategy or an inactive step gives exactly the unguided samples, a prompt's samples
do not depend on its batch, ``settings()`` is JSON and round-trips through the CLI's class path,
and ``refine`` returns a ``GuidanceOutput`` of float32 logits."""
import importlib
import inspect
import json

import pytest
import torch
import yaml

import guidance
from entrgi_core import generate
from entrgi_core.contract import GuidanceOutput, Sampling
from guidance import SMC, EntRGi, Expectation, NoGuidance, StraightThrough
from tests.conftest import PROMPTS, in_process_cli, make_step, small_config

SMALL = small_config()

# (id, the strategy, the same strategy switched off: no steps, or no step active)
STRATEGIES = [
    ("entrgi", lambda: EntRGi(steps=2), [lambda: EntRGi(steps=0), lambda: EntRGi(steps=2, start=0.0, stop=0.0)]),
    ("aps", lambda: StraightThrough(steps=1, every=2), [lambda: StraightThrough(lr=0.0)]),
    ("expectation", lambda: Expectation(steps=1, min_entropy=0.01), [lambda: Expectation(steps=1, min_entropy=1.0)]),
    ("none", NoGuidance, [NoGuidance]),
    ("smc-fk", lambda: SMC(beta=0.3, ess_threshold=1.0), [lambda: SMC(beta=float("inf"))]),
    ("smc-entrgi", lambda: SMC(EntRGi(steps=1), beta=0.3, every=2),
     [lambda: SMC(EntRGi(steps=0), beta=float("inf"))]),
]
IDS = [s[0] for s in STRATEGIES]


def test_every_strategy_is_listed():
    listed = {type(make()).__name__ for _, make, _ in STRATEGIES}
    assert listed == {c.__name__ for c in guidance.STRATEGIES + guidance.PARTICLE_STRATEGIES}


@pytest.mark.parametrize("make,offs", [s[1:] for s in STRATEGIES], ids=IDS)
def test_switched_off_is_exactly_unguided(dlm, rm, make, offs):
    base = generate(dlm, PROMPTS, reward=rm, config=SMALL)
    for off in offs:
        res = generate(dlm, PROMPTS, reward=rm, guidance=off(), config=SMALL)
        assert torch.equal(res.tokens, base.tokens) and res.guided_steps == []


@pytest.mark.parametrize("make", [s[1] for s in STRATEGIES], ids=IDS)
def test_a_prompts_samples_do_not_depend_on_its_batch(dlm, rm, make):
    batched = generate(dlm, PROMPTS, reward=rm, guidance=make(), config=SMALL, prompt_ids=["a", "b", "c"])
    alone = generate(dlm, PROMPTS[1:2], reward=rm, guidance=make(), config=SMALL, prompt_ids=["b"])
    assert torch.equal(alone.tokens[0], batched.tokens[1])
    torch.testing.assert_close(alone.rewards[0], batched.rewards[1])


def init_args(settings: dict) -> dict:
    """The CLI's {class_path, init_args} of a strategy from its ``settings()``."""
    module, name = settings["class"].rsplit(".", 1)
    cls = getattr(importlib.import_module(module), name)
    params = inspect.signature(cls).parameters
    args = {k: init_args(v) if isinstance(v, dict) and "class" in v else v for k, v in settings.items() if k in params}
    return {"class_path": settings["class"], "init_args": args}


@pytest.mark.parametrize("make", [s[1] for s in STRATEGIES], ids=IDS)
def test_settings_are_json_and_round_trip_through_the_cli(make, cli_config, capsys):
    strategy = make()
    settings = json.loads(json.dumps(strategy.settings()))
    assert settings == strategy.settings()
    code, err = in_process_cli("predict", "--config", str(cli_config), "--guidance", json.dumps(init_args(settings)),
                               "--print_config")
    assert code == 0, err
    parsed = yaml.safe_load(capsys.readouterr().out)["guidance"]

    def build(spec):
        module, name = spec["class_path"].rsplit(".", 1)
        kwargs = {k: build(v) if isinstance(v, dict) and "class_path" in v else v
                  for k, v in (spec.get("init_args") or {}).items()}
        return getattr(importlib.import_module(module), name)(**kwargs)

    assert build(parsed).settings() == settings


@pytest.mark.parametrize("make", [s[1] for s in STRATEGIES], ids=IDS)
def test_refine_returns_float32_logits_where_it_guides(dlm, rm, make):
    strategy = make()
    tokens = torch.full((2, 5), dlm.mask_id)
    rows, cols = (tokens == dlm.mask_id).nonzero(as_tuple=True)
    step = make_step(dlm, rm, tokens, rows, cols, samples=2, sampling=Sampling(0.7, 0.95, None))
    phi = torch.randn(rows.numel(), dlm.vocab_size)
    if not strategy.guides(step, phi):
        assert not strategy.needs_reward or isinstance(strategy, SMC)
        return
    out = strategy.refine(phi, step)
    assert isinstance(out, GuidanceOutput)
    assert out.logits.shape == phi.shape and out.logits.dtype == torch.float32 and torch.isfinite(out.logits).all()
    assert step.work.forwards.tolist() == [strategy.proposal.steps if isinstance(strategy, SMC) else strategy.steps] * 2
