"""Guidance strategies: one contract suite over every strategy the package exports (a new
strategy inherits it by being listed in CONTRACT), run with one reward model and with a composite
``Sum`` of two, and over the guide's strategy-writing example; the step windows of the gated
strategies; the sampler's settings as the one source of truth."""
import ast
import importlib
import inspect
import json
import re
from dataclasses import dataclass

import pytest
import torch
import yaml

import guidance
from entrgi_core import DenoiseConfig, generate
from entrgi_core.contract import GuidanceOutput, Sampling
from entrgi_core.errors import InputError
from guidance import SMC, Constant, EntRGi, Expectation, LinearDecay, MaskedShare, NoGuidance, StraightThrough
from rewards import HFRewardModel, Sum
from tests.helpers import PROMPTS, ROOT, exploding_model, in_process_cli, make_step, save_tiny_rm, small_config

SMALL = small_config()


def guide_example() -> type:
    """The strategy class of docs/guide.md's strategy-writing example, defined from the guide's own
    text (its imports and classes only; the rest of the block runs in tests/test_docs.py)."""
    text = (ROOT / "docs" / "guide.md").read_text()
    block = next(b for b in re.findall(r"```python\n(.*?)```", text, re.S) if "(Guidance):" in b)
    tree = ast.parse(block)
    tree.body = [n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom, ast.ClassDef))]
    space = {"__name__": "guide_md"}
    exec(compile(tree, "docs/guide.md", "exec"), space)
    (cls,) = [v for v in space.values() if isinstance(v, type) and v.__module__ == "guide_md"]
    return cls


GUIDE = guide_example()


@dataclass
class Entry:
    id: str
    make: object          # () -> the strategy
    offs: list            # the same strategy switched off (no steps, no step active)
    reads: int            # reward-model forwards (and backwards) of one refine, per row and model; 0: it never guides
    packaged: bool = True   # exported by the package (round-trips through the CLI's class path)


CONTRACT = [
    Entry("entrgi", lambda: EntRGi(steps=2), [lambda: EntRGi(steps=0), lambda: EntRGi(steps=2, start=0.0, stop=0.0)],
          reads=2),
    Entry("aps", lambda: StraightThrough(steps=1, every=2), [lambda: StraightThrough(lr=0.0)], reads=1),
    Entry("expectation", lambda: Expectation(steps=1, min_entropy=0.01), [lambda: Expectation(steps=1, min_entropy=1.0)],
          reads=1),
    Entry("none", NoGuidance, [NoGuidance], reads=0),
    Entry("smc-fk", lambda: SMC(beta=0.3, ess_threshold=1.0), [lambda: SMC(beta=float("inf"))], reads=0),
    Entry("smc-entrgi", lambda: SMC(EntRGi(steps=1), beta=0.3, every=2), [lambda: SMC(EntRGi(steps=0), beta=float("inf"))],
          reads=1),
    Entry("guide-example", lambda: GUIDE(0.5), [], reads=1, packaged=False),
    Entry("entrgi-kl-decay", lambda: EntRGi(steps=2, kl=0.1, strength=LinearDecay(1.0, 0.25)),
          [lambda: EntRGi(steps=2, kl=0.5, strength=Constant(0.0))], reads=2),
    Entry("expectation-masked-share", lambda: Expectation(steps=1, kl=1.0, strength=MaskedShare(2.0)), [], reads=1),
]
IDS = [e.id for e in CONTRACT]
REWARDS = ["one", "sum"]


@pytest.fixture(scope="module")
def rm_b(tmp_path_factory):
    return HFRewardModel.from_pretrained(str(save_tiny_rm(tmp_path_factory.mktemp("rm_b"), seed=1)))


@pytest.fixture(params=REWARDS)
def reward(request, rm, rm_b):
    """One reward model, or a composite of two (every term is read, and counted)."""
    return rm if request.param == "one" else Sum([(1.0, rm), (0.5, rm_b)])


def test_every_strategy_is_listed():
    listed = {type(e.make()).__name__ for e in CONTRACT if e.packaged}
    assert listed == {c.__name__ for c in guidance.STRATEGIES + guidance.PARTICLE_STRATEGIES}


@pytest.mark.parametrize("entry", CONTRACT, ids=IDS)
def test_switched_off_is_exactly_unguided(dlm, reward, entry):
    base = generate(dlm, PROMPTS, reward=reward, config=SMALL)
    for off in entry.offs:
        res = generate(dlm, PROMPTS, reward=reward, guidance=off(), config=SMALL)
        assert torch.equal(res.tokens, base.tokens) and res.guided_steps == []


@pytest.mark.parametrize("entry", CONTRACT, ids=IDS)
def test_a_prompts_samples_do_not_depend_on_its_batch(dlm, reward, entry):
    batched = generate(dlm, PROMPTS, reward=reward, guidance=entry.make(), config=SMALL, prompt_ids=["a", "b", "c"])
    alone = generate(dlm, PROMPTS[1:2], reward=reward, guidance=entry.make(), config=SMALL, prompt_ids=["b"])
    assert torch.equal(alone.tokens[0], batched.tokens[1])
    torch.testing.assert_close(alone.rewards[0], batched.rewards[1])


@pytest.mark.parametrize("entry", CONTRACT, ids=IDS)
def test_refine_ascends_and_counts_its_own_work(dlm, reward, entry):
    """Where a strategy guides, refine returns float32 logits that raise the relaxed reward (on
    average over random logits), and every reward model's forwards and backwards are counted,
    whatever the strategy does; where it does not guide, the loop never calls refine."""
    strategy = entry.make()
    tokens = torch.full((4, 6), dlm.mask_id)
    rows, cols = (tokens == dlm.mask_id).nonzero(as_tuple=True)
    gains = []
    for seed in range(3):
        step = make_step(dlm, reward, tokens, rows, cols, samples=2, sampling=Sampling(0.7, 0.95, None))
        phi = 3 * torch.randn(rows.numel(), dlm.vocab_size, generator=torch.Generator().manual_seed(seed))
        assert strategy.guides(step, phi) == (entry.reads > 0)
        if not entry.reads:
            return
        out = strategy.refine(phi, step)
        assert isinstance(out, GuidanceOutput) and out.logits.shape == phi.shape
        assert out.logits.dtype == torch.float32 and torch.isfinite(out.logits).all()
        for part in step.side.parts:
            assert part.work.forwards.tolist() == part.work.backwards.tolist() == [entry.reads] * 4
        relaxation = (strategy.proposal if isinstance(strategy, SMC) else strategy).relaxation(step)
        with torch.no_grad():
            before, after = (step.read(p, relaxation, inner=0).rewards.mean() for p in (phi, out.logits))
        gains.append(float(after - before))
    assert sum(gains) / len(gains) > 0, gains


@pytest.mark.parametrize("entry", [e for e in CONTRACT if e.packaged], ids=[e.id for e in CONTRACT if e.packaged])
def test_settings_are_json_and_round_trip_through_the_cli(entry, cli_config, capsys):
    strategy = entry.make()
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


def init_args(settings: dict) -> dict:
    """The CLI's {class_path, init_args} of a strategy from its ``settings()``."""
    module, name = settings["class"].rsplit(".", 1)
    cls = getattr(importlib.import_module(module), name)
    params = inspect.signature(cls).parameters
    args = {k: init_args(v) if isinstance(v, dict) and "class" in v else v for k, v in settings.items() if k in params}
    return {"class_path": settings["class"], "init_args": args}


def test_settings_come_from_the_constructor_and_say_what_is_missing():
    assert EntRGi(steps=2, every=3).settings() == {
        "class": "guidance.entrgi.EntRGi", "steps": 2, "lr": 0.5, "optimizer": "adam", "entropy_temperature": 1.0,
        "start": 0.0, "stop": 1.0, "every": 3, "min_entropy": 0.0, "temperature": None, "top_p": None}

    class Forgetful(NoGuidance):
        def __init__(self, bonus: float = 1.0):
            super().__init__()

    with pytest.raises(TypeError, match="no attribute 'bonus'"):
        Forgetful().settings()


# ----------------------------------------------------------------------------- gated strategies

def test_guidance_changes_samples_and_raises_reward(dlm, rm):
    cfg = DenoiseConfig(steps=8, max_new_tokens=8, num_samples=4, seed=0)
    base = generate(dlm, PROMPTS, reward=rm, guidance=NoGuidance(), config=cfg)
    guided = generate(dlm, PROMPTS, reward=rm, guidance=EntRGi(steps=3, lr=1.0), config=cfg)
    assert not torch.equal(base.tokens, guided.tokens)
    assert guided.avg_reward.mean() > base.avg_reward.mean()


@pytest.mark.parametrize("kwargs,message", [
    ({"steps": -1}, "steps \\(M\\) must be an integer >= 0"),
    ({"lr": -0.5}, "lr \\(eta\\) must be a finite number >= 0"),
    ({"temperature": 0.0}, "temperature must be None \\(the sampler's\\) or > 0"),
    ({"top_p": 0.0}, "top_p must be None \\(the sampler's\\) or lie in"),
    ({"optimizer": "lbfgs"}, "optimizer must be"),
    ({"every": 0}, "every must be an integer >= 1"),
    ({"min_entropy": 1.5}, "min_entropy must lie in"),
])
def test_bad_guidance(kwargs, message):
    with pytest.raises(ValueError, match=message):
        EntRGi(**kwargs)


@pytest.mark.parametrize("kwargs,guided", [
    ({"every": 3}, [0, 3, 6]),
    ({"start": 0.5}, [4, 5, 6, 7]),
    ({"stop": 0.25}, [0, 1]),
    ({"min_entropy": 1.0}, []),                       # the model is never that uncertain
    ({"min_entropy": 0.1}, list(range(8))),
])
def test_guided_step_windows(dlm, rm, kwargs, guided):
    cfg = DenoiseConfig(steps=8, max_new_tokens=6, num_samples=2)
    res = generate(dlm, PROMPTS[:2], reward=rm, guidance=EntRGi(steps=1, **kwargs), config=cfg)
    assert res.guided_steps == guided
    if not guided:                                    # every step excluded: exactly the unguided samples
        assert torch.equal(res.tokens, generate(dlm, PROMPTS[:2], reward=rm, config=cfg).tokens)


def test_the_strategy_alone_says_which_steps_it_guides(dlm, rm):
    tokens = torch.full((2, 4), dlm.mask_id)
    rows, cols = (tokens == dlm.mask_id).nonzero(as_tuple=True)
    phi = torch.randn(rows.numel(), dlm.vocab_size)
    g = EntRGi(every=2)
    assert [g.guides(make_step(dlm, rm, tokens, rows, cols, index=i), phi) for i in range(4)] == [True, False] * 2
    none = rows[:0]
    assert not g.guides(make_step(dlm, rm, tokens, none, none, index=0), phi[:0])     # no masked position
    assert not EntRGi(steps=0).guides(make_step(dlm, rm, tokens, rows, cols), phi)


class Recorder(EntRGi):
    """EntRGi that records the sampling settings it used."""

    def refine(self, phi, step):
        type(self).seen.append((self.sampling(step.temperature, step.top_p), step.top_k))
        return super().refine(phi, step)


def test_guidance_uses_the_samplers_temperature_top_p_and_top_k(dlm, rm):
    Recorder.seen = []
    cfg = DenoiseConfig(steps=2, max_new_tokens=4, num_samples=1, temperature=1.0, top_p=0.8, top_k=7)
    generate(dlm, PROMPTS[:1], reward=rm, guidance=Recorder(steps=1), config=cfg)
    assert Recorder.seen == [((1.0, 0.8), 7)] * 2
    Recorder.seen = []
    generate(dlm, PROMPTS[:1], reward=rm, guidance=Recorder(steps=1, temperature=0.5), config=cfg)
    assert Recorder.seen == [((0.5, 0.8), 7)] * 2            # overridden only where told


def test_greedy_sampler_needs_an_explicit_guidance_temperature(rm):
    model = exploding_model()
    with pytest.raises(ValueError, match=r"greedy \(temperature 0\).*EntRGi\(temperature=0.7\)"):
        generate(model, ["x"], reward=rm, guidance=EntRGi(), config=DenoiseConfig(temperature=0.0))


def test_no_guidance_carries_no_gradient_loop():
    for knob in ("steps", "lr", "optimizer", "temperature", "top_p", "entropy_temperature", "start", "stop", "every"):
        assert not hasattr(NoGuidance(), knob)
    with pytest.raises(TypeError):
        NoGuidance(steps=3)
    assert not NoGuidance().needs_reward


def test_top_k_reaches_the_hard_sample(dlm, rm):
    tokens = torch.full((3, 5), dlm.mask_id)
    rows, cols = (tokens == dlm.mask_id).nonzero(as_tuple=True)
    phi = torch.randn(rows.numel(), dlm.vocab_size, generator=torch.Generator().manual_seed(0))
    step = make_step(dlm, rm, tokens, rows, cols, sampling=Sampling(0.7, 0.95, 1))
    for inner in range(3):
        assert torch.equal(step.hard_tokens(phi, inner, temperature=5.0, top_p=1.0), phi.argmax(-1))
    free = make_step(dlm, rm, tokens, rows, cols)
    assert not torch.equal(free.hard_tokens(phi, 0, temperature=5.0, top_p=1.0), phi.argmax(-1))


def test_a_reading_without_gradient_counts_no_backward(dlm, rm):
    tokens = torch.full((2, 4), dlm.mask_id)
    rows, cols = (tokens == dlm.mask_id).nonzero(as_tuple=True)
    step = make_step(dlm, rm, tokens, rows, cols)
    phi = torch.randn(rows.numel(), dlm.vocab_size)
    with torch.no_grad():
        step.read(phi)
    reading = step.read(phi.clone().requires_grad_(True))
    (work,) = [p.work for p in step.side.parts]
    assert work.forwards.tolist() == [2, 2] and work.backwards.tolist() == [0, 0]    # no backward ran yet
    reading.rewards.sum().backward()
    assert work.backwards.tolist() == [1, 1] and torch.equal(work.backward_tokens, reading.tokens[0])


def test_the_soft_gate_reads_no_hard_sample_and_is_the_same_without_one(dlm, rm, monkeypatch):
    tokens = torch.full((2, 4), dlm.mask_id)
    rows, cols = (tokens == dlm.mask_id).nonzero(as_tuple=True)
    step = make_step(dlm, rm, tokens, rows, cols)
    phi = torch.randn(rows.numel(), dlm.vocab_size, generator=torch.Generator().manual_seed(0))
    soft = Expectation(steps=1).relaxation(step)
    drawn = torch.randint(0, dlm.vocab_size, (rows.numel(),), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        given = step.read(phi, soft, hard=drawn).rewards
        monkeypatch.setattr(type(step), "hard_tokens", lambda *a, **k: pytest.fail("drew a hard sample"))
        assert torch.equal(step.read(phi, soft).rewards, given)         # w = 0: the hard sample is never read


# ----------------------------------------------------------------------------- trust region and strength


def _step_and_logits(dlm, rm, seed=0):
    tokens = torch.full((4, 6), dlm.mask_id)
    rows, cols = (tokens == dlm.mask_id).nonzero(as_tuple=True)
    step = make_step(dlm, rm, tokens, rows, cols, samples=2, sampling=Sampling(0.7, 0.95, None))
    phi = 3 * torch.randn(rows.numel(), dlm.vocab_size, generator=torch.Generator().manual_seed(seed))
    return step, phi


def _reference_refine(strategy, phi, step, lr, kl_term=None):
    """The gradient loop as the paper writes it (and as this package ran it before the trust
    region existed): M Adam steps on -sum(rewards), plus ``kl_term(var)`` when given."""
    var = phi.detach().float().clone().requires_grad_(True)
    opt = torch.optim.Adam([var], lr=lr, fused=True)
    with torch.enable_grad():
        for m in range(strategy.steps):
            loss = -strategy.relaxed_reading(var, step, m).rewards.sum()
            if kl_term is not None:
                loss = loss + kl_term(var)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    return var.detach()


@pytest.mark.parametrize("cls", [EntRGi, Expectation, StraightThrough])
def test_no_trust_region_and_constant_strength_are_the_paper_loop_bit_for_bit(dlm, rm, cls):
    step, phi = _step_and_logits(dlm, rm)
    for strategy in (cls(steps=3), cls(steps=3, kl=0.0, strength=Constant(1.0))):
        assert torch.equal(strategy.refine(phi, step).logits, _reference_refine(strategy, phi, step, lr=0.5))
    assert cls(steps=3, kl=0.0).settings() == cls(steps=3).settings()          # old runs stay the same run


def test_the_trust_regions_gradient_is_the_hand_derived_one():
    """d KL(q || p) / d phi_v = q_v / tau * (log q_v - log p_v - KL), q = softmax(phi / tau), against
    autograd in float64 and a central finite difference, with -inf logits in both distributions."""
    from guidance.trust_region import base_log_probs, reverse_kl_

    gen = torch.Generator().manual_seed(0)
    phi = torch.randn(5, 40, generator=gen, dtype=torch.float64) * 2
    phi0 = phi + torch.randn(5, 40, generator=gen, dtype=torch.float64)
    phi[1, :3] = phi0[1, :3] = float("-inf")                        # tokens no distribution holds
    phi[2, 5] = float("-inf")                                        # one only the unguided distribution holds
    tau, beta = 0.7, 0.3
    log_p = torch.log_softmax(phi0 / tau, -1)
    grad = torch.zeros_like(phi)
    kl = reverse_kl_(phi, log_p, tau, beta, grad)

    x = phi.clamp(min=-1e4).requires_grad_(True)                   # exp(-1e4 / tau) is exactly 0 in float64
    log_q = torch.log_softmax(x / tau, -1)
    q = log_q.exp()
    assert torch.equal(q == 0, torch.isneginf(phi))
    want = (q * (log_q - log_p.clamp(min=-1e4))).sum(-1)             # q = 0 wherever log_p is clamped
    (want_grad,) = torch.autograd.grad(beta * want.sum(), x)
    torch.testing.assert_close(kl, want.detach())
    torch.testing.assert_close(grad, want_grad, rtol=1e-10, atol=1e-12)
    assert (kl >= 0).all() and float(reverse_kl_(phi0, log_p, tau, 1.0, None).abs().max()) < 1e-6   # 0 at q = p

    h = 1e-6                                                         # a finite difference at one finite logit
    for r, v in ((0, 7), (2, 9)):
        up, down = phi.clone(), phi.clone()
        up[r, v] += h
        down[r, v] -= h
        fd = beta * (reverse_kl_(up, log_p, tau, 1.0, None)[r] - reverse_kl_(down, log_p, tau, 1.0, None)[r]) / (2 * h)
        assert abs(float(fd) - float(grad[r, v])) < 1e-5
    assert torch.equal(base_log_probs(phi0.float(), tau), torch.log_softmax(phi0.float() / tau, -1))


def test_the_trust_region_is_added_to_the_loss_and_holds_guidance_near_the_model(dlm, rm):
    """refine with kl = beta is the paper loop with beta * KL(q || p) added to the loss (autograd),
    and the larger beta, the closer the refined distribution stays to the step's unguided one."""
    from guidance.trust_region import base_log_probs, reverse_kl_

    step, phi = _step_and_logits(dlm, rm)
    tau = 0.7
    log_p = base_log_probs(phi, tau)

    def kl_of(logits):
        return float(reverse_kl_(logits, log_p, tau, 1.0, None).mean())

    strategy = EntRGi(steps=3, kl=0.5)

    def autograd_kl(var):
        log_q = torch.log_softmax(var / tau, -1)
        return 0.5 * (log_q.exp() * (log_q - log_p)).sum()

    torch.testing.assert_close(strategy.refine(phi, step).logits,
                               _reference_refine(strategy, phi, step, lr=0.5, kl_term=autograd_kl),
                               rtol=1e-5, atol=1e-5)
    kls = [kl_of(EntRGi(steps=3, kl=beta).refine(phi, step).logits) for beta in (0.0, 1.0, 10.0)]
    assert kls[0] > kls[1] > kls[2] >= 0, kls


def test_strength_schedules_give_their_factors_and_scale_the_step(dlm, rm):
    assert [Constant(0.5)(t, 0.3) for t in (0.0, 0.9)] == [0.5, 0.5]
    assert [LinearDecay(1.0, 0.0)(t, 1.0) for t in (0.0, 0.25, 0.5)] == [1.0, 0.75, 0.5]
    assert LinearDecay(0.2, 1.0)(0.5, 1.0) == pytest.approx(0.6)
    assert [MaskedShare(2.0)(0.5, s) for s in (1.0, 0.5, 0.0)] == [1.0, 0.25, 0.0]
    assert LinearDecay().uses_total and not LinearDecay(0.5, 0.5).uses_total and not Constant().uses_total
    assert EntRGi(strength=LinearDecay()).uses_total and not EntRGi(strength=MaskedShare()).uses_total
    assert not EntRGi(strength=Constant(0.0)).needs_reward and not EntRGi(strength=LinearDecay(0, 0)).needs_reward

    step, phi = _step_and_logits(dlm, rm)                            # step 0 of T: t = 0, every position masked
    half = EntRGi(steps=2, lr=0.5, strength=Constant(0.5)).refine(phi, step).logits
    assert torch.equal(half, EntRGi(steps=2, lr=0.25).refine(phi, step).logits)
    assert torch.equal(EntRGi(steps=2, strength=MaskedShare()).refine(phi, step).logits,
                       EntRGi(steps=2).refine(phi, step).logits)      # all masked: factor 1


@pytest.mark.parametrize("kwargs,message", [
    (dict(kl=-0.1), "EntRGi: kl (beta) must be a finite number >= 0, got -0.1"),
    (dict(kl=float("nan")), "EntRGi: kl (beta) must be a finite number >= 0, got nan"),
    (dict(strength=0.5), "EntRGi: strength must be a guidance.strength schedule (Constant, LinearDecay, MaskedShare) "
                         "or None, got float"),
])
def test_bad_trust_region_or_strength(kwargs, message):
    with pytest.raises(InputError, match=re.escape(message)):
        EntRGi(**kwargs)
    for bad, text in ((lambda: Constant(-1), "Constant: value must be a finite number >= 0, got -1"),
                      (lambda: LinearDecay(1, float("inf")), "LinearDecay: end must be a finite number >= 0, got inf"),
                      (lambda: MaskedShare(0), "MaskedShare: power must be a finite number > 0, got 0")):
        with pytest.raises(InputError, match=re.escape(text)):
            bad()
