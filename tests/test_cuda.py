"""Paths that only a CUDA device exercises: the sampler's device invariance (counter-based draws),
the gradient strategies (fused Adam, trust region, strength schedules) against the same step on
the CPU, the trust region's closed form, and SMC end to end. Skipped without a CUDA device; run
on a GPU machine by ``benchmarks/gpu_check.sh``."""
import pytest
import torch

from entrgi_core import MaskedLM, generate
from guidance import SMC, EntRGi, Expectation, StraightThrough
from guidance.strength import LinearDecay, MaskedShare
from guidance.trust_region import base_log_probs, reverse_kl_
from rewards import HFRewardModel
from tests.helpers import PROMPTS, make_step, requires_cuda, small_config

pytestmark = requires_cuda

STRATEGIES = {
    "entrgi": lambda: EntRGi(steps=3),
    "entrgi-kl-linear": lambda: EntRGi(steps=3, kl=0.1, strength=LinearDecay()),
    "expectation-kl-masked": lambda: Expectation(steps=2, kl=0.01, strength=MaskedShare()),
    "aps": lambda: StraightThrough(steps=2),
}


@pytest.fixture(scope="module")
def pair(tiny_dlm_path, tiny_rm_path):
    """The tiny random model and reward model on the CPU and on the GPU."""
    return {dev: (MaskedLM.from_pretrained(str(tiny_dlm_path), device=dev),
                  HFRewardModel.from_pretrained(str(tiny_rm_path), device=dev)) for dev in ("cpu", "cuda")}


def test_unguided_samples_do_not_depend_on_the_device(pair):
    cfg = small_config(num_samples=3)
    out = {dev: generate(dlm, PROMPTS, reward=rm, config=cfg) for dev, (dlm, rm) in pair.items()}
    assert torch.equal(out["cpu"].tokens, out["cuda"].tokens.cpu())
    torch.testing.assert_close(out["cpu"].rewards, out["cuda"].rewards.cpu(), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name", sorted(STRATEGIES))
def test_refine_on_cuda_matches_the_cpu(pair, name):
    refined = {}
    for dev, (dlm, rm) in pair.items():
        tokens = torch.full((4, 6), dlm.mask_id, device=dev)
        tokens[:, :2] = 5
        rows, cols = (tokens == dlm.mask_id).nonzero(as_tuple=True)
        phi = torch.randn(rows.numel(), dlm.vocab_size, generator=torch.Generator().manual_seed(0)).to(dev)
        refined[dev] = STRATEGIES[name]().refine(phi, make_step(dlm, rm, tokens, rows, cols, index=3))
    a, b = refined["cpu"], refined["cuda"]
    torch.testing.assert_close(b.logits.cpu(), a.logits, rtol=1e-3, atol=1e-3)
    torch.testing.assert_close(b.weight.cpu(), a.weight, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name", sorted(STRATEGIES))
def test_no_host_sync_inside_refine_with_a_trust_region_and_schedules(pair, name):
    dlm, rm = pair["cuda"]
    tokens = torch.full((4, 6), dlm.mask_id, device="cuda")
    rows, cols = (tokens == dlm.mask_id).nonzero(as_tuple=True)
    step = make_step(dlm, rm, tokens, rows, cols, index=2)
    step.canvas                                          # built once per denoising step, outside
    phi = torch.randn(rows.numel(), dlm.vocab_size, device="cuda")
    g = STRATEGIES[name]()
    g.refine(phi, step)                                  # warm-up
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        g.refine(phi, step)
    finally:
        torch.cuda.set_sync_debug_mode("default")


def test_reverse_kl_on_cuda_matches_the_cpu():
    gen = torch.Generator().manual_seed(1)
    phi, phi0 = torch.randn(37, 3001, generator=gen) * 3, torch.randn(37, 3001, generator=gen) * 3
    phi[0, :100] = float("-inf")
    out = {}
    for dev in ("cpu", "cuda"):
        grad = torch.zeros(37, 3001, device=dev)
        kl = reverse_kl_(phi.to(dev), base_log_probs(phi0.to(dev), 0.7), 0.7, 0.1, grad)
        out[dev] = (kl.cpu(), grad.cpu())
    torch.testing.assert_close(out["cuda"][0], out["cpu"][0], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(out["cuda"][1], out["cpu"][1], rtol=1e-4, atol=1e-6)


def test_smc_with_gradient_proposals_runs_on_cuda_and_its_rewards_match_the_cpu_rm(pair):
    dlm, rm = pair["cuda"]
    res = generate(dlm, PROMPTS[:2], reward=rm, guidance=SMC(proposal=Expectation(steps=1, kl=0.01)),
                   config=small_config(num_samples=3))
    assert torch.isfinite(res.rewards).all()
    rescored = pair["cpu"][1].score_text([p for p in PROMPTS[:2] for _ in range(3)], [t for row in res.texts for t in row])
    torch.testing.assert_close(rescored.cpu().view(2, 3), res.rewards.cpu().float(), rtol=1e-3, atol=1e-3)
