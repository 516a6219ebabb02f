"""The compiled gated relaxation against its pure-PyTorch reference (DESIGN.md §3, §4)."""
import itertools
import math
import re
import warnings

import pytest
import torch

import entrgi_core.ops as ops
from entrgi_core.errors import NonFiniteLogitsError
from entrgi_core.ops import relax_embeddings, relax_embeddings_reference
from tests.helpers import requires_cuda

GATES = ["entropy", "ste", "soft", "tensor"]
TOL = {torch.float32: 2e-5, torch.float64: 1e-10, torch.float16: 4e-3, torch.bfloat16: 3e-2}


@pytest.fixture(autouse=True, scope="module")
def _compiled():
    assert ops.extension_available(), f"compiled op missing: {ops.build_info()}"


def non_contiguous(t: torch.Tensor) -> torch.Tensor:
    """Same values, strided storage: every other column of a twice-as-wide tensor."""
    wide = torch.empty(t.shape[0], 2 * t.shape[1], dtype=t.dtype, device=t.device)
    wide[:, ::2] = t
    view = wide[:, ::2]
    assert not view.is_contiguous() or t.numel() <= 1
    return view


def make(n, v, d, *, logits_dtype=torch.float32, table_dtype=torch.float32, seed=0, device="cpu", scale=3.0):
    g = torch.Generator().manual_seed(seed)
    x = (torch.randn(n, v, generator=g, dtype=torch.float64) * scale).to(logits_dtype)
    e = torch.randn(v, d, generator=g, dtype=torch.float64).to(table_dtype)
    ids = torch.randint(0, v, (n,), generator=g)
    w = torch.rand(n, generator=g)
    return x.to(device), e.to(device), ids.to(device), w.to(device)


def gate_arg(gate, w):
    return w if gate == "tensor" else gate


def assert_close(a, b, dtype, what):
    tol = TOL[dtype]
    scale = max(1.0, b.abs().max().item() if b.numel() else 1.0)
    err = (a.double() - b.double()).abs().max().item() if a.numel() else 0.0
    assert err <= tol * scale, f"{what}: max error {err:.3g} > {tol * scale:.3g}"


@pytest.mark.parametrize("gate", GATES)
@pytest.mark.parametrize("n,v,d", list(itertools.product([0, 1, 7, 300], [2, 3, 1000], [1, 5, 64])))
def test_forward_and_grad_match_reference(gate, n, v, d):
    x, e, ids, w = make(n, v, d)
    g = torch.randn(n, d, generator=torch.Generator().manual_seed(1))
    xs = non_contiguous(x) if v > 1 else x
    es = non_contiguous(e)
    outs = []
    for fn in (relax_embeddings, relax_embeddings_reference):
        xr = xs.clone().requires_grad_(True) if n else xs.clone()
        xr = xs.detach().requires_grad_(True)
        out = fn(xr, es, ids, gate=gate_arg(gate, w), temperature=0.7, entropy_temperature=1.3)
        out.embeds.backward(g)
        outs.append((out, xr.grad))
    (a, ga), (b, gb) = outs
    assert a.embeds.shape == (n, d) and a.embeds.dtype == e.dtype
    assert a.weight.shape == (n,) and a.weight.dtype == torch.float32
    assert_close(a.embeds, b.embeds, torch.float32, "embeds")
    assert_close(a.weight, b.weight, torch.float32, "weight")
    assert_close(ga, gb, torch.float32, "grad")


@pytest.mark.parametrize("gate", GATES)
@pytest.mark.parametrize(
    "logits_dtype,table_dtype",
    [(torch.float32, torch.bfloat16), (torch.bfloat16, torch.bfloat16), (torch.float16, torch.float16),
     (torch.float32, torch.float16), (torch.bfloat16, torch.float32)],
)
def test_low_precision_matches_reference(gate, logits_dtype, table_dtype):
    x, e, ids, w = make(37, 1000, 64, logits_dtype=logits_dtype, table_dtype=table_dtype)
    g = torch.randn(37, 64, generator=torch.Generator().manual_seed(2)).to(table_dtype)
    res = []
    for fn in (relax_embeddings, relax_embeddings_reference):
        xr = x.clone().requires_grad_(True)
        out = fn(xr, e, ids, gate=gate_arg(gate, w), temperature=0.7)
        out.embeds.backward(g)
        assert out.embeds.dtype == table_dtype and xr.grad.dtype == logits_dtype
        res.append((out, xr.grad))
    (a, ga), (b, gb) = res
    low = table_dtype if TOL[table_dtype] > TOL[logits_dtype] else logits_dtype
    assert_close(a.embeds, b.embeds, low, "embeds")
    assert_close(a.weight, b.weight, torch.float16, "weight")  # weight is float32 of low-precision input
    assert_close(ga, gb, low, "grad")


def test_neg_inf_and_huge_logits():
    x, e, ids, _ = make(6, 50, 8)
    x[0, :49] = float("-inf")                 # a top-k filtered row with one token left
    x[1, ::2] = float("-inf")
    x[1, 1::2] = 0.5                           # 25 equal live tokens
    x[2] *= 1e4                                # very large magnitudes
    x[3] = x[3] * 1e-6 - 1e30                  # huge offset, flat row
    ids[0] = 7                                 # hard token on a -inf logit is still allowed
    for gate in ("entropy", "ste", "soft"):
        xa, xb = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
        a = relax_embeddings(xa, e, ids, gate=gate, temperature=0.7)
        b = relax_embeddings_reference(xb, e, ids, gate=gate, temperature=0.7)
        a.embeds.sum().backward()
        b.embeds.sum().backward()
        assert torch.isfinite(a.embeds).all() and torch.isfinite(xa.grad).all()
        assert_close(a.embeds, b.embeds, torch.float32, gate)
        assert_close(xa.grad, xb.grad, torch.float32, gate)
    w = relax_embeddings(x, e, ids).weight
    assert w[0] == 0.0                         # one live token: zero entropy
    assert abs(w[3].item() - 1.0) < 1e-5       # flat row: maximal entropy
    assert abs(w[1].item() - math.log(25) / math.log(50)) < 1e-4


def test_forward_value_is_the_gate_mix():
    x, e, ids, w = make(5, 40, 6)
    out = relax_embeddings(x, e, ids, gate=w, temperature=0.5)
    soft = torch.softmax(x / 0.5, -1) @ e
    expected = (1 - w[:, None]) * soft + w[:, None] * e[ids]
    torch.testing.assert_close(out.embeds, expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(relax_embeddings(x, e, ids, gate="ste").embeds, e[ids])
    torch.testing.assert_close(relax_embeddings(x, e, ids, gate="soft").embeds, torch.softmax(x, -1) @ e,
                               atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("chunk_rows", [1, 3, 64])
def test_chunking_is_invisible(chunk_rows):
    x, e, ids, _ = make(50, 300, 9)
    g = torch.randn(50, 9)
    res = []
    for c in (0, chunk_rows):
        xr = x.clone().requires_grad_(True)
        out = relax_embeddings(xr, e, ids, temperature=0.8, chunk_rows=c)
        out.embeds.backward(g)
        res.append((out.embeds, out.weight, xr.grad))
    for a, b in zip(*res):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-6)


def test_only_logits_get_gradients_and_nothing_n_by_v_is_saved():
    n, v, d = 64, 512, 16
    x, e, ids, _ = make(n, v, d)
    x.requires_grad_(True)
    e.requires_grad_(True)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        out = relax_embeddings(x, e, ids)
    big = [t for t in saved if t.numel() >= n * v and t.data_ptr() != x.data_ptr()]
    assert not big, f"an N x V tensor was saved for backward: {[tuple(t.shape) for t in big]}"
    out.embeds.sum().backward()
    assert x.grad is not None and e.grad is None


@pytest.mark.parametrize("tau,tau_h", [(1.0, 1.0), (0.6, 1.4)])
def test_gradcheck_float64(tau, tau_h):
    # Only w = 0 makes the forward value differentiable in the usual sense; other gates pass the
    # soft term's gradient by design (straight-through), which the next test checks.
    x, e, ids, _ = make(4, 7, 3, logits_dtype=torch.float64, table_dtype=torch.float64, scale=1.0)
    fn = lambda xx: relax_embeddings(xx, e, ids, gate="soft", temperature=tau,  # noqa: E731
                                     entropy_temperature=tau_h).embeds
    assert torch.autograd.gradcheck(fn, (x.requires_grad_(True),), eps=1e-6, atol=1e-7)


@pytest.mark.parametrize("gate", GATES)
def test_every_gate_passes_the_soft_gradient(gate):
    x, e, ids, w = make(6, 13, 5, logits_dtype=torch.float64, table_dtype=torch.float64)
    g = torch.randn(6, 5, dtype=torch.float64)
    grads = []
    for gt in (gate_arg(gate, w.double()), "soft"):
        xr = x.clone().requires_grad_(True)
        relax_embeddings(xr, e, ids, gate=gt, temperature=0.6).embeds.backward(g)
        grads.append(xr.grad)
    torch.testing.assert_close(grads[0], grads[1], atol=1e-12, rtol=1e-12)


def test_opcheck():
    x, e, ids, w = make(5, 11, 4)
    for gw in (None, w, torch.ones(5), torch.zeros(5, dtype=torch.float64)):   # entropy gate, or w given
        args = (x.clone().requires_grad_(True), e, ids, gw, 0.7, 1.0, 0)
        torch.library.opcheck(torch.ops.entrgi.relax_fwd.default, args)
    _, _, stats = torch.ops.entrgi.relax_fwd(x, e, ids, None, 0.7, 1.0, 0)
    torch.library.opcheck(torch.ops.entrgi.relax_bwd.default, (torch.randn(5, 4), x, e, stats, 0.7, 0))


def test_fake_kernels_refuse_what_the_kernels_refuse():
    from torch._subclasses.fake_tensor import FakeTensorMode

    x, e, ids, w = make(4, 10, 3)
    bad = [((x, e[:-1], ids, None), "V=10 columns but the table has 9"), ((x[0], e, ids, None), "logits must be [N, V]"),
           ((x, e, ids[:3], None), "hard_ids must be int64 [N]"), ((x, e, ids.int(), None), "hard_ids must be int64"),
           ((x, e, ids, w[:2]), "gate_weight must be floating [N]"), ((x.long(), e, ids, None), "must be floating")]
    with FakeTensorMode() as mode:
        for (lx, le, li, lw), message in bad:
            fake = [mode.from_tensor(t) if t is not None else None for t in (lx, le, li, lw)]
            with pytest.raises(ValueError, match=re.escape(message)):
                torch.ops.entrgi.relax_fwd(*fake, 1.0, 1.0, 0)
        out = torch.ops.entrgi.relax_fwd(*(mode.from_tensor(t) for t in (x, e, ids)), None, 1.0, 1.0, 0)
        assert [tuple(t.shape) for t in out] == [(4, 3), (4,), (4, 2)]


def test_nothing_is_saved_when_the_logits_need_no_gradient():
    x, e, ids, _ = make(8, 50, 4)
    e.requires_grad_(True)                                  # a table that wants a gradient gets none anyway
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        out = relax_embeddings(x, e, ids)
    assert not saved and not out.embeds.requires_grad


def test_torch_compile_fullgraph():
    x, e, ids, _ = make(6, 30, 4)

    def f(xx):
        return relax_embeddings(xx, e, ids).embeds.square().sum()      # defaults: value checks included

    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")
    xa, xb = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    compiled(xa).backward()
    f(xb).backward()
    torch.testing.assert_close(xa.grad, xb.grad)


# ----------------------------------------------------------------------------- bad input

BAD = [
    (lambda x, e, i: (x[0], e, i), {}, "logits must be a 2-D"),
    (lambda x, e, i: (x, e[0], i), {}, "table must be a 2-D"),
    (lambda x, e, i: (x, e, i[None]), {}, "hard_ids must be a 1-D"),
    (lambda x, e, i: (x, e[:-1], i), {}, "V=10 columns but the table has 9"),
    (lambda x, e, i: (x[:, :1], e[:1], i.clamp(max=0)), {}, "V >= 2"),
    (lambda x, e, i: (x, e, i + 10), {}, "hard_ids must lie in [0, 10)"),
    (lambda x, e, i: (x, e, i - 1 - i.max()), {}, "hard_ids must lie in [0, 10)"),
    (lambda x, e, i: (x, e, i), {"gate": torch.full((4,), 1.5)}, "values in [0, 1]"),
    (lambda x, e, i: (x, e, i), {"gate": torch.full((3,), 0.5)}, "gate tensor must be [N]"),
    (lambda x, e, i: (x, e, i), {"gate": "hard"}, "gate must be one of"),
    (lambda x, e, i: (x, e, i), {"temperature": 0.0}, "temperature must be > 0"),
    (lambda x, e, i: (x, e, i), {"temperature": -1.0}, "temperature must be > 0"),
    (lambda x, e, i: (x, e, i), {"entropy_temperature": 0.0}, "entropy_temperature must be > 0"),
    (lambda x, e, i: (x.long(), e, i), {}, "logits must be float32"),
    (lambda x, e, i: (x, e, i.int()), {}, "hard_ids must be int64"),
]


@pytest.mark.parametrize("fn", [relax_embeddings, relax_embeddings_reference], ids=["op", "reference"])
@pytest.mark.parametrize("build,kwargs,message", BAD)
def test_bad_input_is_a_clear_error(fn, build, kwargs, message):
    x, e, ids, _ = make(4, 10, 3)
    args = build(x, e, ids)
    with pytest.raises(ValueError, match=re.escape(message)):
        fn(*args, **kwargs)


@pytest.mark.parametrize("fn", [relax_embeddings, relax_embeddings_reference], ids=["op", "reference"])
@pytest.mark.parametrize("where,message", [((0, 2), "row 2 of the logits is all -inf"), ((1, 3), "NaN or +inf")])
def test_non_finite_logits_are_one_error(fn, where, message):
    x, e, ids, _ = make(4, 10, 3)
    dim, index = where
    x = x.index_fill(dim, torch.tensor([index]), float("-inf") if dim == 0 else float("nan"))
    with pytest.raises(NonFiniteLogitsError, match=re.escape(message)):
        fn(x, e, ids)


def test_compiled_op_checks_shapes_itself_and_propagates_non_finite_values():
    x, e, ids, w = make(4, 10, 3)
    with pytest.raises(ValueError, match="V=10 columns but the table has 9"):
        torch.ops.entrgi.relax_fwd(x, e[:-1], ids, None, 1.0, 1.0, 0)
    with pytest.raises(ValueError, match="gate_weight must be \\[N\\] with N=4"):
        torch.ops.entrgi.relax_fwd(x, e, ids, w[:3], 1.0, 1.0, 0)
    bad = x.clone()
    bad[1] = float("-inf")                                  # all -inf
    bad[2, 3] = float("nan")
    for gate in ("entropy", "ste", "soft"):                 # as on CUDA: NaN rows out, the others exact
        out = relax_embeddings(bad, e, ids, gate=gate, validate=False).embeds
        assert torch.isnan(out[1:3]).all()
        torch.testing.assert_close(out[[0, 3]], relax_embeddings(x[[0, 3]], e, ids[[0, 3]], gate=gate).embeds)


def test_missing_extension_falls_back_with_one_message(monkeypatch):
    x, e, ids, _ = make(3, 12, 4)
    monkeypatch.setitem(ops._state, "loaded", False)
    monkeypatch.setitem(ops._state, "error", "ImportError: simulated")
    monkeypatch.setitem(ops._state, "warned", False)
    assert not ops.extension_available()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        a = relax_embeddings(x, e, ids)
        relax_embeddings(x, e, ids)
    msgs = [str(w.message) for w in caught if "entrgi" in str(w.message)]
    assert len(msgs) == 1 and "pip install --no-build-isolation -e ." in msgs[0]
    torch.testing.assert_close(a.embeds, relax_embeddings_reference(x, e, ids).embeds)


def test_build_info_reports_cuda_build_when_toolkit_present():
    info = ops.build_info()
    assert info["available"] and info["version"]
    if torch.version.cuda is not None:
        assert info["cuda"], "torch has CUDA and the toolkit is present: the CUDA kernels must be compiled"


# ----------------------------------------------------------------------------- CUDA


@requires_cuda
@pytest.mark.parametrize("gate", GATES)
@pytest.mark.parametrize("logits_dtype,table_dtype", [(torch.float32, torch.float32), (torch.float32, torch.bfloat16),
                                                      (torch.bfloat16, torch.bfloat16), (torch.float16, torch.float16)])
@pytest.mark.parametrize("n,v,d", [(1, 2, 1), (7, 1000, 5), (300, 3001, 64)])
def test_cuda_matches_reference(gate, logits_dtype, table_dtype, n, v, d):
    x, e, ids, w = make(n, v, d, logits_dtype=logits_dtype, table_dtype=table_dtype, device="cuda")
    x[0, : v // 2] = float("-inf")
    g = torch.randn(n, d, device="cuda").to(table_dtype)
    res = []
    for fn in (relax_embeddings, relax_embeddings_reference):
        xr = x.clone().requires_grad_(True)
        out = fn(xr, e, ids, gate=gate_arg(gate, w), temperature=0.7, entropy_temperature=1.2)
        out.embeds.backward(g)
        res.append((out, xr.grad))
    (a, ga), (b, gb) = res
    low = table_dtype if TOL[table_dtype] > TOL[logits_dtype] else logits_dtype
    assert_close(a.embeds, b.embeds, low, "embeds")
    assert_close(a.weight, b.weight, torch.float16, "weight")
    assert_close(ga, gb, low, "grad")


@requires_cuda
def test_cuda_gradcheck_and_opcheck():
    x, e, ids, w = make(4, 9, 3, logits_dtype=torch.float64, table_dtype=torch.float64, scale=1.0, device="cuda")
    fn = lambda xx: relax_embeddings(xx, e, ids, gate="soft", temperature=0.6).embeds  # noqa: E731
    assert torch.autograd.gradcheck(fn, (x.requires_grad_(True),), eps=1e-6, atol=1e-6)
    torch.library.opcheck(torch.ops.entrgi.relax_fwd.default,
                          (x.detach().float().requires_grad_(True), e.float(), ids, None, 0.7, 1.0, 0))


@requires_cuda
def test_cuda_propagates_non_finite_logits_as_the_cpu_does():
    x, e, ids, _ = make(4, 10, 3)
    x[1] = float("-inf")
    x[2, 3] = float("nan")
    cpu = relax_embeddings(x, e, ids, validate=False).embeds
    gpu = relax_embeddings(x.cuda(), e.cuda(), ids.cuda(), validate=False).embeds.cpu()
    assert torch.isnan(gpu[1:3]).all() and torch.isnan(cpu[1:3]).all()
    torch.testing.assert_close(gpu[[0, 3]], cpu[[0, 3]], atol=1e-5, rtol=1e-5)
    with pytest.raises(NonFiniteLogitsError):
        relax_embeddings(x.cuda(), e.cuda(), ids.cuda())
