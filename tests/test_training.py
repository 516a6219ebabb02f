"""The training wing (entrgi_core.training): estimators and objectives by hand, GuidedFineTuner
under trainer.fit, resuming, budgets, LoRA and the entrgi fit command."""
import json
import math
import re
from types import SimpleNamespace

import lightning as L
import pytest
import torch
from torch import nn

from entrgi_core import DenoiseConfig, MaskedLM, rng
from entrgi_core.data import PromptDataModule, StepBatches
from entrgi_core.errors import InputError
from entrgi_core.models import DiffusionLM
from entrgi_core.tinyworld.tokenizers import build_dlm_tokenizer
from entrgi_core.training import FitLogger, FitOutputs, GuidedFineTuner
from entrgi_core.training.likelihood import ELBO_EPS, Estimator, TokenTerms
from entrgi_core.training.objectives import grpo_loss, rwr_loss, rwr_weights, sft_loss
from entrgi_core.training.outputs import read_metrics
from entrgi_core.training.rollouts import RolloutWriter
from entrgi_core.writer import read_jsonl
from guidance import EntRGi
from tests.helpers import REVIEW_PROMPTS, in_process_cli, prompts_file, snapshot, strip

CFG = DenoiseConfig(steps=4, max_new_tokens=6, num_samples=2, seed=1)


class Lookup(nn.Module):
    """logits[b, i] = table[input_ids[b, i]] + bias[i]: each position reads only its own token."""

    def __init__(self, vocab: int, positions: int = 64):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.table = nn.Parameter(torch.randn(vocab, vocab, generator=g))
        self.bias = nn.Parameter(torch.randn(positions, vocab, generator=g))
        self.config = SimpleNamespace(vocab_size=vocab, max_position_embeddings=positions)
        self.seen = []

    def forward(self, input_ids, attention_mask=None, position_ids=None, **kw):
        self.seen.append(input_ids.clone())
        return SimpleNamespace(logits=self.table[input_ids] + self.bias[: input_ids.shape[1]])


@pytest.fixture
def lookup():
    tok = build_dlm_tokenizer()
    return DiffusionLM.from_model(Lookup(len(tok)), tok)


def _case(model):
    encoded = [model.tokenizer("write a review of the hotel")["input_ids"], model.tokenizer("hi")["input_ids"]]
    tok = model.tokenizer
    responses = torch.tensor([[tok.convert_tokens_to_ids(w) for w in ["it", "was", "great", "."]] + [model.eos_id] * 2,
                              [tok.convert_tokens_to_ids(w) for w in ["the", "room", "was", "bad", "and", "."]]])
    return encoded, responses, torch.tensor([11, 12])


def _tuner(dlm_path, rm, **kw):
    dlm = MaskedLM(str(dlm_path))
    return GuidedFineTuner(dlm, rm, kw.pop("guidance", EntRGi(steps=1)), kw.pop("config", CFG), **kw)


def _fit(module, tmp_path, steps, prompts=REVIEW_PROMPTS[:4], batch=2, callbacks=(), ckpt_path=None, out="out",
         overwrite=False, every=1):
    from lightning.pytorch.callbacks import ModelCheckpoint

    dm = PromptDataModule(path=str(prompts_file(tmp_path / "train.jsonl", prompts)), id_field="id", batch_size=batch)
    d = tmp_path / out
    trainer = L.Trainer(accelerator="cpu", devices=1, max_steps=steps, logger=FitLogger(str(d)), enable_model_summary=False,
                        enable_progress_bar=False, num_sanity_val_steps=0,
                        callbacks=[FitOutputs(str(d), overwrite=overwrite), RolloutWriter(str(d)),
                                   ModelCheckpoint(dirpath=d / "checkpoints", save_top_k=0, save_last=True,
                                                   every_n_train_steps=every), *callbacks])
    trainer.fit(module, dm, ckpt_path=ckpt_path)
    return trainer, d


def _weights(module):
    return {k: v.detach().clone() for k, v in module.model.model.state_dict().items()}


class _Crash(L.Callback):
    def __init__(self, at: int):
        self.at = at

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step == self.at:
            raise RuntimeError("killed")


def _fit_config(tmp_path, tiny_dlm_path, tiny_rm_path, steps=2):
    import yaml

    from tests.helpers import ROOT

    cfg = yaml.safe_load((ROOT / "configs" / "fit_tiny.yaml").read_text())
    cfg["dlm"]["init_args"]["path"] = str(tiny_dlm_path)
    cfg["reward"]["init_args"]["path"] = str(tiny_rm_path)
    cfg["sampling"].update(steps=4, max_new_tokens=6, num_samples=2)
    cfg["data"].update(path=str(prompts_file(tmp_path / "train.jsonl", REVIEW_PROMPTS[:4])), batch_size=2)
    cfg["trainer"]["max_steps"] = steps
    cfg["output_dir"] = str(tmp_path / "fit")
    path = tmp_path / "fit.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_one_step_estimator_by_hand(lookup):
    encoded, responses, keys = _case(lookup)
    terms = Estimator("one_step", p_mask_prompt=0.0)(lookup, encoded, responses, keys, counter=3)
    width = max(map(len, encoded))
    m = lookup.model
    expect = torch.log_softmax(m.table[lookup.mask_id] + m.bias[width: width + 6], -1)     # every response masked
    logp = expect.gather(1, responses.T).T                                               # (2, 6)
    torch.testing.assert_close(terms.logp, logp)
    assert terms.length.tolist() == [5.0, 6.0]                               # up to the first EOS, inclusive
    assert terms.weight.tolist() == [[1, 1, 1, 1, 1, 0], [1] * 6]
    torch.testing.assert_close(terms.sequence(), torch.stack([logp[0, :5].sum() / 5, logp[1].sum() / 6]))
    canvas = m.seen[-1]
    assert (canvas[:, width:] == lookup.mask_id).all() and not (canvas[:, :width] == lookup.mask_id).any()


def test_one_step_masks_the_prompt_at_its_rate_and_by_key(lookup):
    encoded, responses, keys = _case(lookup)
    est = Estimator("one_step", p_mask_prompt=0.5)
    width = max(map(len, encoded))
    est(lookup, encoded, responses, keys, counter=0)
    both = lookup.model.seen[-1][:, :width]
    est(lookup, encoded[1:], responses[1:], keys[1:], counter=0)                    # alone: the same mask
    assert torch.equal(lookup.model.seen[-1][0, -len(encoded[1]):], both[1, -len(encoded[1]):])
    est(lookup, encoded, responses, keys, counter=1)                                 # another counter: another mask
    assert not torch.equal(lookup.model.seen[-1][:, :width], both)
    prompt = torch.tensor(encoded[0])
    u = rng.uniform(rng.derive(keys[:1, None], rng.TRAIN_MASK, 0, 0, torch.arange(width)[None, :]))[0]
    assert torch.equal(both[0] == lookup.mask_id, u < 0.5) and 0 < int((both[0] != prompt).sum()) < width


def test_elbo_estimator_by_hand(lookup):
    encoded, responses, keys = _case(lookup)
    terms = Estimator("elbo", mc_samples=2)(lookup, encoded, responses, keys, counter=5)
    width, m = max(map(len, encoded)), lookup.model
    cols = torch.arange(width + 6)
    total = torch.zeros(2)
    for j in range(2):
        p = ELBO_EPS + (1 - ELBO_EPS) * rng.uniform(rng.derive(keys, rng.TRAIN_RATE, 5, j))
        masked = rng.uniform(rng.derive(keys[:, None], rng.TRAIN_MASK, 5, j, cols[None, :]))[:, width:] < p[:, None]
        inputs = torch.where(masked, lookup.mask_id, responses)
        logp = torch.log_softmax(m.table[inputs] + m.bias[width: width + 6], -1).gather(2, responses[..., None])[..., 0]
        counted = torch.tensor([[1, 1, 1, 1, 1, 0], [1] * 6], dtype=torch.bool)
        total += (logp * (masked & counted) / p[:, None]).sum(1) / 2
    torch.testing.assert_close(terms.sequence(), total / torch.tensor([5.0, 6.0]))
    with pytest.raises(InputError, match="mc_samples applies to estimator='elbo'"):
        Estimator("one_step", mc_samples=2)
    with pytest.raises(InputError, match="estimator must be one of"):
        Estimator("exact")


def test_objectives_by_hand():
    logp = torch.tensor([[-1.0, -2.0], [-0.5, -0.5], [-3.0, -1.0], [-2.0, -2.0]], requires_grad=True)
    terms = TokenTerms(logp, torch.ones(4, 2), torch.full((4,), 2.0))
    ll = torch.tensor([-1.5, -0.5, -2.0, -2.0])
    torch.testing.assert_close(sft_loss(terms, 2), -ll.mean())
    rewards = torch.tensor([[1.0, 0.0], [0.2, 0.4]])
    soft = rwr_weights(rewards, "soft", 0.5)
    torch.testing.assert_close(soft[0], torch.tensor([math.exp(2) / (math.exp(2) + 1), 1 / (math.exp(2) + 1)]))
    assert rwr_weights(rewards, "best", 1.0).tolist() == [[1, 0], [0, 1]]
    assert rwr_weights(rewards, "uniform", 1.0).tolist() == [[0.5, 0.5], [0.5, 0.5]]
    torch.testing.assert_close(rwr_loss(terms, rewards, "best", 1.0), -(ll[0] + ll[3]) / 2)
    # grpo at ratio 1 with no KL: loss 0 (centred advantages), gradient -A / (len * rows) per token
    loss, stats = grpo_loss(terms, logp.detach(), None, rewards, clip=0.2, kl_weight=0.0)
    loss.backward()
    adv = torch.tensor([0.5, -0.5, -0.1, 0.1])
    assert float(loss) == pytest.approx(0.0, abs=1e-7) and float(stats["clipped"]) == 0
    torch.testing.assert_close(logp.grad, (-adv / 2 / 4)[:, None].expand(4, 2))
    # a ratio above 1 + clip with A > 0 is clipped: no gradient through it
    logp.grad = None
    old = logp.detach().clone()
    old[0] -= 1.0                                                     # rho = e on row 0's tokens
    grpo_loss(terms, old, None, rewards, clip=0.2, kl_weight=0.0)[0].backward()
    assert logp.grad[0].abs().sum() == 0 and logp.grad[1].abs().sum() > 0
    # the k3 KL to a reference equal to the policy is zero; away from it, positive
    ref = logp.detach() + 0.3
    kl_loss = grpo_loss(terms, logp.detach(), ref, rewards, clip=0.2, kl_weight=1.0)[0]
    assert float(kl_loss) == pytest.approx(math.exp(0.3) - 0.3 - 1, rel=1e-5)


def test_unread_tokens_never_reach_the_losses():
    # an ELBO sample reads only its masked tokens; the others (an unmasked token predicting itself)
    # may hold any log-probability, -inf included, and must not turn a loss or its gradient into NaN
    logp = torch.tensor([[-1.0, -float("inf")], [-0.5, -200.0]], requires_grad=True)
    weight = torch.tensor([[2.0, 0.0], [1.0, 0.0]])
    terms = TokenTerms(logp, weight, torch.full((2,), 2.0))
    rewards = torch.tensor([[1.0, 0.0]])
    old = torch.tensor([[-1.0, 0.0], [-0.5, -1.0]])
    ref = torch.tensor([[-1.2, 0.0], [-0.5, 50.0]])
    losses = [sft_loss(terms, 2), rwr_loss(terms, rewards, "soft", 0.5),
              grpo_loss(terms, old, ref, rewards, clip=0.2, kl_weight=0.1)[0]]
    for loss in losses:
        logp.grad = None
        loss.backward()
        assert torch.isfinite(loss) and torch.isfinite(logp.grad).all() and (logp.grad[:, 1] == 0).all()
    torch.testing.assert_close(losses[0], torch.tensor((1.0 + 0.25) / 2))     # -mean(sum(w logp) / len)
    # at ratio 1 on the read tokens: -A per row (+-0.5) cancels; the KL reads only row 0's token
    torch.testing.assert_close(losses[2], torch.tensor(0.1 * (math.exp(-0.2) + 0.2 - 1) / 2))


def test_training_batches_depend_on_the_step_only():
    items = [{"id": f"p{i}", "prompt": f"prompt {i}"} for i in range(5)]
    one = StepBatches(items, 4, seed=3, start=0, stop=6)
    ranks = [StepBatches(items, 2, seed=3, start=0, stop=6, rank=r, world=2) for r in range(2)]
    for step in range(6):
        together = sorted(ranks[0].batch(step)["position"] + ranks[1].batch(step)["position"])
        assert together == one.batch(step)["position"] == list(range(4 * step, 4 * step + 4))
    stream = [one._at(p)["id"] for p in range(10)]
    assert sorted(stream[:5]) == sorted(stream[5:]) == [f"p{i}" for i in range(5)]   # every pass a permutation
    assert stream[:5] != stream[5:]
    resumed = StepBatches(items, 4, seed=3, start=2, stop=6)
    assert [b["id"] for b in resumed] == [one.batch(s)["id"] for s in range(2, 6)] and len(resumed) == 4


def test_one_update_raises_the_likelihood_of_its_rollouts(tiny_dlm_path, rm, tmp_path):
    module = _tuner(tiny_dlm_path, rm, lr=1e-2)
    _fit(module, tmp_path, 1)
    ro = module._rollouts
    with torch.no_grad():
        after = module._terms(ro).sequence()
        before = module._terms(ro, module.reference).sequence()            # the frozen start, same masks
    assert float(after.mean()) > float(before.mean())
    assert module.step_metrics["kl"] == 0.0                               # step 0: the policy is the reference


@pytest.mark.parametrize("setting", ["steps=0", "lr=0"])
def test_no_steps_or_zero_lr_change_nothing(tiny_dlm_path, rm, tmp_path, setting):
    module = _tuner(tiny_dlm_path, rm, lr=0.0 if setting == "lr=0" else 1e-2, objective="rwr")
    start = _weights(module)
    _, out = _fit(module, tmp_path, 0 if setting == "steps=0" else 2)
    assert all(torch.equal(start[k], v) for k, v in _weights(module).items())
    saved = MaskedLM(str(out / "model"))                                    # the exported model is the start
    assert all(torch.equal(start[k], v) for k, v in saved.model.state_dict().items())


def test_lora_trains_only_the_adapters_and_exports_merged(tiny_dlm_path, rm, tmp_path):
    pytest.importorskip("peft")
    module = _tuner(tiny_dlm_path, rm, lr=5e-2, lora={"r": 4, "target_modules": ["query", "value"]})
    base = {k: v.clone() for k, v in module.model.model.state_dict().items() if "lora_" not in k}
    adapters = {k: v.clone() for k, v in module.model.model.state_dict().items() if "lora_" in k}
    assert module.reference is None and all("lora_" in n for n, p in module.model.model.named_parameters()
                                            if p.requires_grad)
    _, out = _fit(module, tmp_path, 2)
    now = module.model.model.state_dict()
    assert all(torch.equal(base[k], now[k]) for k in base)                 # the base never moves
    assert any(not torch.equal(adapters[k], now[k]) for k in adapters)
    assert module.step_metrics["kl"] > 0                                    # adapters off = the reference
    merged, plain = MaskedLM(str(out / "model")), MaskedLM(str(tiny_dlm_path))
    assert set(merged.model.state_dict()) == set(plain.model.state_dict())  # a plain model, LoRA merged in
    ids = torch.tensor([[5, 6, plain.mask_id, plain.mask_id]])
    attn, pos = torch.ones_like(ids, dtype=torch.bool), torch.arange(4)[None]
    with torch.no_grad():
        expect = module.model.position_logits(ids, attn, pos)
    torch.testing.assert_close(merged.logits(ids, attn, pos), expect, rtol=1e-4, atol=1e-4)
    assert not torch.allclose(plain.logits(ids, attn, pos), expect)


def test_a_killed_run_resumes_to_the_same_weights_steps_and_records(tiny_dlm_path, rm, tmp_path):
    straight = _tuner(tiny_dlm_path, rm, lr=1e-2, objective="grpo", inner_steps=2, guidance=None)
    _, a = _fit(straight, tmp_path, 4, out="a")
    killed = _tuner(tiny_dlm_path, rm, lr=1e-2, objective="grpo", inner_steps=2, guidance=None)
    with pytest.raises(RuntimeError, match="killed"):
        _fit(killed, tmp_path, 4, out="b", callbacks=[_Crash(3)])            # mid inner cycle (rollouts of step 2)
    resumed = _tuner(tiny_dlm_path, rm, lr=1e-2, objective="grpo", inner_steps=2, guidance=None)
    trainer, b = _fit(resumed, tmp_path, 4, out="b", ckpt_path="last")
    assert trainer.global_step == 4
    wa, wb = _weights(straight), _weights(resumed)
    assert all(torch.allclose(wa[k], wb[k], atol=1e-6) for k in wa)
    assert [r["step"] for r in read_metrics(b / "metrics.csv")] == [0, 1, 2, 3]
    for key in ("loss", "reward_avg", "fwd_eq"):
        assert [r[key] for r in read_metrics(b / "metrics.csv")] == pytest.approx(
            [r[key] for r in read_metrics(a / "metrics.csv")], rel=1e-5)
    lines = read_jsonl(b / "rollouts.jsonl")                                 # rollouts at steps 0 and 2, once each
    assert [ln["step"] for ln in lines] == [0] * 4 + [2] * 4 and lines == read_jsonl(a / "rollouts.jsonl")
    assert json.loads((b / "summary.json").read_text())["steps"] == 4


def test_the_budget_stops_training_at_matched_compute(tiny_dlm_path, rm, tmp_path):
    module = _tuner(tiny_dlm_path, rm, lr=1e-3, guidance=None, objective="rwr", budget=1.0)
    trainer, out = _fit(module, tmp_path, 10)
    assert trainer.global_step == 1 and module.spent > 1.0                  # one step already spends more
    cfg = module.config
    assert module.spent >= 2 * cfg.num_samples * cfg.steps                  # 2 prompts x K rows x T forwards
    assert read_metrics(out / "metrics.csv")[0]["fwd_eq"] == pytest.approx(module.spent)
    elbo = _tuner(tiny_dlm_path, rm, lr=1e-3, guidance=None, objective="rwr", budget=1.0, estimator="elbo",
                  mc_samples=3)
    _fit(elbo, tmp_path, 10, out="elbo")                                    # the same rollouts, 3 forwards per row
    assert elbo.spent - module.spent == pytest.approx(2 * cfg.num_samples * 3 * (3 - 1))


def test_bad_training_settings_are_refused_before_compute(tiny_dlm_path, rm):
    from tests.helpers import exploding_model

    for kw, says in (({"objective": "ppo"}, "objective must be one of"), ({"estimator": "exact"}, "estimator must be"),
                     ({"beta": 0.0}, "beta must be > 0"),
                     ({"objective": "grpo", "config": DenoiseConfig(num_samples=1)}, "needs num_samples .K. >= 2"),
                     ({"weights": "top"}, "weights must be one of"), ({"budget": -1.0}, "budget must be"),
                     ({"lora": {"rank": 4}}, "lora must be None or a dict")):
        with pytest.raises(InputError, match=says):
            GuidedFineTuner(exploding_model(), rm, None, kw.pop("config", CFG), **kw)
    with pytest.raises(InputError, match="a reward is needed"):
        GuidedFineTuner(exploding_model(), None, None, CFG)
    frozen = exploding_model()
    frozen.model = nn.Identity()                                             # nothing to train
    frozen.model.config = SimpleNamespace()
    with pytest.raises(InputError, match="has no parameter to train"):
        GuidedFineTuner(frozen, rm, None, CFG)
    with pytest.raises(InputError, match="must be a masked diffusion LM"):
        GuidedFineTuner(object(), rm, None, CFG)


def test_an_output_directory_holding_a_run_is_kept(tiny_dlm_path, rm, tmp_path):
    _, out = _fit(_tuner(tiny_dlm_path, rm, lr=1e-3), tmp_path, 1)
    before = snapshot(out)
    with pytest.raises(InputError, match="holds this training run .at step 1.; nothing was changed"):
        _fit(_tuner(tiny_dlm_path, rm, lr=1e-3), tmp_path, 1)
    with pytest.raises(InputError, match="holds another training run .different lr.; nothing was changed"):
        _fit(_tuner(tiny_dlm_path, rm, lr=1e-2), tmp_path, 1)
    assert snapshot(out) == before
    _fit(_tuner(tiny_dlm_path, rm, lr=1e-2), tmp_path, 1, overwrite=True)
    assert json.loads((out / "run.json").read_text())["lr"] == 1e-2


@pytest.mark.slow
def test_cli_fit_writes_a_loadable_model_and_resumes(tmp_path, tiny_dlm_path, tiny_rm_path):
    cfg = _fit_config(tmp_path, tiny_dlm_path, tiny_rm_path)
    code, err = in_process_cli("fit", "--config", str(cfg))
    assert code == 0, err
    out = tmp_path / "fit"
    assert {"run.json", "metrics.csv", "summary.json", "model", "checkpoints", "rollouts.jsonl"} <= \
        {p.name for p in out.iterdir()}
    assert MaskedLM(str(out / "model")).vocab_size == MaskedLM(str(tiny_dlm_path)).vocab_size
    assert len(read_jsonl(out / "rollouts.jsonl")) == 2 * 2 * 2              # steps x prompts x K
    code, err = in_process_cli("fit", "--config", str(cfg))
    assert code == 2 and "--ckpt_path last" in err and "Traceback" not in err
    code, err = in_process_cli("fit", "--config", str(cfg), "--trainer.max_steps", "3", "--ckpt_path", "last")
    assert code == 0, err
    assert [r["step"] for r in read_metrics(out / "metrics.csv")] == [0, 1, 2]
    code, err = in_process_cli("fit", "--config", str(cfg), "--model.objective", "ppo")
    assert code == 2 and "objective must be one of" in err
    code, err = in_process_cli("fit", "--config", str(cfg), "--trainer.max_steps", "-1")
    assert code == 2 and "--trainer.max_steps" in err


@pytest.mark.slow
def test_cli_predict_exports_rollouts(cli_config, tmp_path):
    code, err = in_process_cli("predict", "--config", str(cli_config), "--export_rollouts", "true")
    assert code == 0, err
    preds = read_jsonl(tmp_path / "out" / "predictions.jsonl")
    lines = read_jsonl(tmp_path / "out" / "rollouts.jsonl")
    assert len(lines) == 2 * len(preds)
    first = [ln for ln in lines if ln["prompt_id"] == preds[0]["prompt_id"]]
    assert [ln["completion"] for ln in first] == preds[0]["responses"]
    assert [ln["reward"] for ln in first] == preds[0]["rewards"] and sum(ln["best"] for ln in first) == 1


@pytest.mark.slow
def test_two_processes_make_the_update_of_one_with_the_same_global_batch(tmp_path, tiny_dlm_path, tiny_rm_path):
    from tests.helpers import cli

    cfg = _fit_config(tmp_path, tiny_dlm_path, tiny_rm_path, steps=2)
    cli("fit", "--config", str(cfg), "--output_dir", str(tmp_path / "one"), "--data.batch_size", "2",
        "--model.lr", "1e-2")
    cli("fit", "--config", str(cfg), "--output_dir", str(tmp_path / "two"), "--data.batch_size", "1",
        "--model.lr", "1e-2", "--trainer.devices", "2", "--trainer.strategy", "ddp")
    one, two = MaskedLM(str(tmp_path / "one" / "model")), MaskedLM(str(tmp_path / "two" / "model"))
    start = MaskedLM(str(tiny_dlm_path)).model.state_dict()
    a, b = one.model.state_dict(), two.model.state_dict()
    assert any(not torch.equal(a[k], start[k]) for k in a)                  # it trained
    assert all(torch.allclose(a[k], b[k], atol=1e-5, rtol=1e-4) for k in a)
    ma, mb = read_metrics(tmp_path / "one" / "metrics.csv"), read_metrics(tmp_path / "two" / "metrics.csv")
    for key in ("loss", "reward_avg", "fwd_eq"):
        assert [r[key] for r in ma] == pytest.approx([r[key] for r in mb], rel=1e-4)
    lines = [sorted(strip(read_jsonl(tmp_path / d / "rollouts.jsonl")), key=json.dumps) for d in ("one", "two")]
    assert lines[0] == lines[1] and len(lines[0]) == 2 * 2 * 2                # the same rollouts, rounded


def test_a_diverged_update_is_a_clear_error(tiny_dlm_path, rm, tmp_path, monkeypatch):
    import entrgi_core.training.finetune as finetune

    monkeypatch.setattr(finetune, "sft_loss", lambda terms, k: terms.sequence().mean() * float("nan"))
    with pytest.raises(FloatingPointError, match="the sft loss at training step 0 is not finite"):
        _fit(_tuner(tiny_dlm_path, rm, lr=1e-3, guidance=None), tmp_path, 1)


# ----------------------------------------------------------------------------- collapse guard


def test_degenerate_rollouts_by_each_test():
    from entrgi_core.training.collapse import Degeneracy
    lines = [{"completion": "the room was clean and the staff kind", "judges": {"oracle": 0.9}},
             {"completion": "   ", "judges": {"oracle": 0.0}},                                    # empty
             {"completion": "great great great great great", "judges": {"oracle": 1.0}},        # repeats
             {"completion": "ok", "judges": {"oracle": 0.8}},                                    # short
             {"completion": "the staff was rude and the bed was bad", "judges": {"oracle": -0.9}}]   # low oracle
    d = Degeneracy(ngram=2, repeat_share=0.5, short=0.25, judges={"oracle": -0.5})
    assert d.repeated_share("great great great great great".split()) == pytest.approx(0.75)
    assert d.repeated_share("a b a b".split()) == pytest.approx(1 / 3) and d.repeated_share(["a"]) == 0.0
    shares = d.shares(lines, median_words=8.0)
    assert shares == pytest.approx({"degenerate": 0.8, "empty": 0.2, "repeats": 0.2, "short": 0.2, "low_oracle": 0.2})
    assert Degeneracy().shares(lines, None)["short"] == 0.0                      # no first length: no length test
    assert Degeneracy.median_words(lines) == 5.0
    with pytest.raises(InputError, match=r"judge floors for \['fluency'\], but the run's judges are \['oracle'\]"):
        Degeneracy(judges={"fluency": 0.0}).shares(lines, 8.0)
    for kwargs, message in ((dict(ngram=0), "ngram must be an integer >= 1"),
                            (dict(repeat_share=0.0), "repeat_share must lie in (0, 1]"),
                            (dict(short=2.0), "short must lie in [0, 1]"),
                            (dict(judges=["oracle"]), "judges must be a dict")):
        with pytest.raises(InputError, match=re.escape(message)):
            Degeneracy(**kwargs)


def test_the_guards_rule_on_synthetic_steps():
    """Stops once the degenerate share exceeds max_share for patience steps in a row; a healthy
    step in between restarts the count; enabled=False only logs."""
    from entrgi_core.training.collapse import CollapseGuard

    def run(shares, **kw):
        guard = CollapseGuard(**kw)
        trainer = SimpleNamespace(global_step=0, should_stop=False, is_global_zero=True, checkpoint_callback=None)
        for share in shares:
            trainer.global_step += 1
            module = SimpleNamespace(step_metrics={"degenerate": share, "empty": 0.0, "repeats": share, "short": 0.0})
            guard.on_train_batch_end(trainer, module, None, None, 0)
            if trainer.should_stop:
                return trainer.global_step - 1, guard
        return None, guard

    assert run([0.1, 0.6, 0.2, 0.6, 0.7, 0.9], max_share=0.5, patience=2)[0] == 4
    assert run([0.1, 0.6, 0.2, 0.6, 0.7, 0.9], max_share=0.5, patience=3)[0] == 5
    assert run([0.5, 0.5, 0.5], max_share=0.5, patience=1)[0] is None           # at the limit is not over it
    assert run([0.9, 0.9, 0.9], max_share=0.5, patience=1, enabled=False)[0] is None
    at, guard = run([0.0, 0.9, 0.9], max_share=0.5, patience=2)
    assert at == 2 and guard.healthy == {0}
    assert "stopped at step 2: 90% of the rollouts were degenerate (empty 0%, repeats 90%, short 0%) for 2 step(s) " \
           "in a row (the guard's rule: more than 50%)" in guard.message
    for kwargs, message in ((dict(max_share=1.0), "max_share must lie in [0, 1)"),
                            (dict(patience=0), "patience must be an integer >= 1")):
        with pytest.raises(InputError, match=re.escape(message)):
            CollapseGuard(**kwargs)


class _Sours(torch.nn.Module):
    """A judge that turns every rollout 'degenerate' from its ``after``-th call on."""

    def __new__(cls, after: int):
        from rewards.text import TextReward
        calls = {"n": 0}

        def sour(prompts, responses):
            calls["n"] += 1
            return [1.0 if calls["n"] <= after else -1.0 for _ in responses]
        return TextReward(sour, name="sour")


def test_the_guard_stops_a_collapsing_fit_and_keeps_the_checkpoint_from_before(tiny_dlm_path, rm, tmp_path, capsys):
    from entrgi_core.training.collapse import BEFORE_COLLAPSE, CollapseGuard, Degeneracy
    module = _tuner(tiny_dlm_path, rm, lr=1e-2, objective="rwr", guidance=None, judges=[_Sours(after=3)],
                    degeneracy=Degeneracy(judges={"sour": 0.0}))
    guard = CollapseGuard(max_share=0.5, patience=2)
    seen = {}

    class Spy(L.Callback):                                     # the weights each step's rollouts were drawn with
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            seen[trainer.global_step] = _weights(pl_module)

    trainer, out = _fit(module, tmp_path, 8, callbacks=[guard, Spy()])
    metrics = read_metrics(out / "metrics.csv")
    assert [r["degenerate"] for r in metrics] == [0.0, 0.0, 0.0, 1.0, 1.0]            # judge calls 4, 5 are sour
    assert [r["low_sour"] for r in metrics] == [0.0, 0.0, 0.0, 1.0, 1.0] and "repeats" in metrics[0]
    assert trainer.global_step == 5 and "stopped at step 4" in capsys.readouterr().err
    kept = torch.load(out / "checkpoints" / BEFORE_COLLAPSE, weights_only=False)
    assert kept["global_step"] == 2 and guard.kept_step == 2                           # drew step 2's healthy rollouts
    state = {k.removeprefix("model.model."): v for k, v in kept["state_dict"].items() if k.startswith("model.model.")}
    assert all(torch.equal(state[k], v) for k, v in seen[2].items())
    last = torch.load(out / "checkpoints" / "last.ckpt", weights_only=False)
    assert last["global_step"] == 5                                                   # the newest is kept as well
