"""Guidance inside other libraries' loops (entrgi_core.integrations): DiffusionGemma's generate
and Dream's diffusion_generate."""
import json

import pytest
import torch
import yaml
from transformers import (
    AutoTokenizer,
    DiffusionGemmaForBlockDiffusion,
    LogitsProcessorList,
)

from entrgi_core import DenoiseConfig, DreamLM, MaskedLM, generate, tinyworld
from entrgi_core.diffusion_gemma import DiffusionGemmaLM
from entrgi_core.tinyworld.diffusion_gemma import save_tiny_diffusion_gemma
from guidance import (
    SMC,
    DreamGuidanceHook,
    EntRGi,
    Expectation,
    GuidanceLogitsProcessor,
)
from tests.dream_like import DreamLike
from tests.helpers import cli, read_jsonl, strip

PROMPTS = ["write a review of the hotel", "write a review of this phone", "write a review of the museum",
           "write a review of the laptop", "write a review of the bakery", "write a review of this camera"]


@pytest.fixture(scope="module")
def gemma_path(tmp_path_factory):
    return save_tiny_diffusion_gemma(tmp_path_factory.mktemp("dgemma"))


@pytest.fixture(scope="module")
def gemma(gemma_path):
    return DiffusionGemmaForBlockDiffusion.from_pretrained(gemma_path).eval(), AutoTokenizer.from_pretrained(gemma_path)


@pytest.fixture(scope="module")
def world_rm(world):
    return world[1]


def chat_ids(tok, prompts):
    texts = [tok.apply_chat_template([{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True)
             for p in prompts]
    return tok(texts, return_tensors="pt", add_special_tokens=False, padding=True)


def run_gemma(model, tok, rm, prompts, processor, seed=0, max_new_tokens=16):
    enc = chat_ids(tok, prompts)
    torch.manual_seed(seed)
    out = model.generate(enc["input_ids"], attention_mask=enc["attention_mask"], max_new_tokens=max_new_tokens,
                         logits_processor=LogitsProcessorList([processor]) if processor is not None else None)
    texts = tok.batch_decode(out.sequences[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)
    return rm.score_text(prompts, texts), texts


@pytest.fixture(scope="module")
def dream_like(world):
    dlm = world[0]
    return DreamLike(dlm.model, dlm.mask_id), dlm.tokenizer


def run_dream(model, tok, rm, prompts, hook, seed):
    enc = chat_ids(tok, prompts)
    gen = torch.Generator().manual_seed(seed)
    x = model.diffusion_generate(enc["input_ids"], attention_mask=enc["attention_mask"], max_new_tokens=24, steps=24,
                                 temperature=0.7, generation_logits_hook_func=hook, generator=gen)
    ids = x[:, enc["input_ids"].shape[1]:]
    texts = []
    for row in ids.tolist():
        cut = row.index(tok.eos_token_id) if tok.eos_token_id in row else len(row)
        texts.append(tok.decode(row[:cut], skip_special_tokens=True))
    return rm.score_text(prompts, texts)


def test_no_inner_steps_leave_the_scores_unchanged(gemma, world_rm):
    model, tok = gemma
    proc = GuidanceLogitsProcessor(world_rm, EntRGi(steps=0), tokenizer=tok, prompts=PROMPTS[:2])
    scores = torch.randn(2, 8, len(tok))
    out = proc(torch.zeros(2, 5, dtype=torch.long), scores, cur_step=torch.tensor(4))
    assert torch.equal(out, scores)
    base, _ = run_gemma(model, tok, world_rm, PROMPTS[:2], None, seed=3)
    same, _ = run_gemma(model, tok, world_rm, PROMPTS[:2], GuidanceLogitsProcessor(
        world_rm, EntRGi(steps=0), tokenizer=tok, prompts=PROMPTS[:2]), seed=3)
    torch.testing.assert_close(base, same)


@pytest.mark.parametrize("strategy", [EntRGi(steps=3), Expectation(steps=3)], ids=["entrgi", "expectation"])
def test_guidance_raises_the_reward_inside_diffusion_gemmas_generate(gemma, world_rm, strategy):
    model, tok = gemma
    gains = []
    for seed in (0, 1):
        base, _ = run_gemma(model, tok, world_rm, PROMPTS, None, seed=seed)
        proc = GuidanceLogitsProcessor(world_rm, strategy, tokenizer=tok, prompts=PROMPTS, seed=seed)
        guided, _ = run_gemma(model, tok, world_rm, PROMPTS, proc, seed=seed)
        gains.append(float(guided.mean() - base.mean()))
        work = proc.reward_work()
        assert all(f == b > 0 for f, b in zip(work["rm_forwards"], work["rm_backwards"]))   # M per step, each row
    assert sum(gains) / len(gains) > 0.3, gains


def test_the_reward_model_sees_earlier_canvases_and_the_relaxed_one(gemma, world_rm):
    """Second canvas: the committed first canvas enters as its tokens, the current one relaxed."""
    model, tok = gemma
    seen = []

    class Spy(EntRGi):
        def refine(self, phi, step):
            seen.append((step.tokens.clone(), step.rows.clone(), step.cols.clone(), phi.shape))
            return super().refine(phi, step)

    proc = GuidanceLogitsProcessor(world_rm, Spy(steps=1), tokenizer=tok, prompts=PROMPTS[:2])
    enc = chat_ids(tok, PROMPTS[:2])
    out = model.generate(enc["input_ids"], attention_mask=enc["attention_mask"], max_new_tokens=16,
                         logits_processor=LogitsProcessorList([proc]))
    p = enc["input_ids"].shape[1]
    first, last = seen[0], seen[-1]
    assert first[0].shape == (2, 8) and first[3] == (16, len(tok)) and first[2].tolist() == list(range(8)) * 2
    assert last[0].shape == (2, 16) and last[2].tolist() == list(range(8, 16)) * 2
    assert torch.equal(last[0][:, :8], out.sequences[:, p:p + 8])       # the first canvas, as committed


def test_temperature_schedule_follows_diffusion_gemma(gemma, world_rm):
    model, tok = gemma
    proc = GuidanceLogitsProcessor(world_rm, EntRGi(steps=1), tokenizer=tok, prompts=PROMPTS[:1],
                                   temperature=(0.5, 1.0))
    seen = []
    for step in (8, 4, 1):
        proc(torch.zeros(1, 5, dtype=torch.long), torch.randn(1, 8, len(tok)), cur_step=torch.tensor(step))
        seen.append(proc.temperature)
    assert seen == pytest.approx([1.0, 0.75, 0.5625])


def test_processor_errors_are_clear(gemma, world_rm):
    model, tok = gemma
    with pytest.raises(ValueError, match="tokenizer is needed"):
        GuidanceLogitsProcessor(world_rm, EntRGi(), tokenizer=None, prompts=PROMPTS[:1])
    with pytest.raises(ValueError, match="strategy must be a guidance strategy"):
        GuidanceLogitsProcessor(world_rm, "EntRGi", tokenizer=tok, prompts=PROMPTS[:1])
    with pytest.raises(ValueError, match="needs a sampler that resamples rows"):
        GuidanceLogitsProcessor(world_rm, SMC(EntRGi()), tokenizer=tok, prompts=PROMPTS[:1])
    with pytest.raises(ValueError, match="prompts must be a non-empty list"):
        GuidanceLogitsProcessor(world_rm, EntRGi(), tokenizer=tok, prompts="write a review")
    with pytest.raises(ValueError, match="reward must be a reward adapter"):
        GuidanceLogitsProcessor(None, EntRGi(), tokenizer=tok, prompts=PROMPTS[:1])
    proc = GuidanceLogitsProcessor(world_rm, EntRGi(steps=1), tokenizer=tok, prompts=PROMPTS[:1])
    with pytest.raises(ValueError, match="scores must be \\(batch, canvas, vocab\\).*not with autoregressive"):
        proc(torch.zeros(1, 5, dtype=torch.long), torch.randn(1, len(tok)))
    with pytest.raises(ValueError, match="the batch has 2 rows but 1 prompts"):
        proc(torch.zeros(2, 5, dtype=torch.long), torch.randn(2, 8, len(tok)), cur_step=torch.tensor(3))
    proc.reset()
    proc(torch.zeros(1, 5, dtype=torch.long), torch.randn(1, 8, len(tok)), cur_step=torch.tensor(3))
    with pytest.raises(ValueError, match="one processor per generate"):
        proc(torch.zeros(1, 7, dtype=torch.long), torch.randn(1, 8, len(tok)), cur_step=torch.tensor(3))
    proc.reset()
    with torch.inference_mode(), pytest.raises(ValueError, match="inference_mode"):
        proc(torch.zeros(1, 5, dtype=torch.long), torch.randn(1, 8, len(tok)), cur_step=torch.tensor(3))


def test_dream_hook_raises_the_reward_and_steps_0_change_nothing(dream_like, world_rm):
    model, tok = dream_like
    base = run_dream(model, tok, world_rm, PROMPTS, None, seed=0)
    same = run_dream(model, tok, world_rm, PROMPTS, DreamGuidanceHook(world_rm, EntRGi(steps=0), tokenizer=tok,
                                                                      prompts=PROMPTS, temperature=0.7), seed=0)
    torch.testing.assert_close(base, same)
    gains = []
    for seed in (0, 1):
        base = run_dream(model, tok, world_rm, PROMPTS, None, seed=seed)
        hook = DreamGuidanceHook(world_rm, Expectation(steps=2), tokenizer=tok, prompts=PROMPTS, temperature=0.7)
        gains.append(float(run_dream(model, tok, world_rm, PROMPTS, hook, seed=seed).mean() - base.mean()))
        assert hook.prompt_length == chat_ids(tok, PROMPTS)["input_ids"].shape[1]
    assert sum(gains) / len(gains) > 0.2, gains


def test_dream_hook_guides_only_masked_response_positions(dream_like, world_rm):
    model, tok = dream_like
    hook = DreamGuidanceHook(world_rm, EntRGi(steps=1), tokenizer=tok, prompts=PROMPTS[:1], temperature=0.7)
    x = torch.tensor([[5, 6, 7, hook.mask_id, 9, hook.mask_id]])
    logits = torch.randn(1, 6, len(tok))
    out = hook(0, x, logits)
    assert hook.prompt_length == 3
    changed = (out != logits).any(-1)[0].tolist()
    assert changed == [False, False, False, True, False, True]
    with pytest.raises(ValueError, match="give the hook diffusion_generate's steps"):
        DreamGuidanceHook(world_rm, EntRGi(stop=0.5), tokenizer=tok, prompts=PROMPTS[:1])
    half = DreamGuidanceHook(world_rm, EntRGi(steps=1, stop=0.5), tokenizer=tok, prompts=PROMPTS[:1], steps=4)
    assert (half(1, x, logits) != logits).any() and torch.equal(half(2, x, logits), logits)
    with pytest.raises(ValueError, match="no mask token"):
        DreamGuidanceHook(world_rm, EntRGi(), tokenizer=AutoTokenizer.from_pretrained(str(tinyworld.rm_path())),
                          prompts=PROMPTS[:1])


def test_dream_lm_and_the_dream_hook_end_a_response_at_the_same_token(world, world_rm):
    """One stop rule: the tokenizer's EOS and pad, the generation config's EOS ids and the chat
    template's turn end, read by both the model adapter and the hook."""
    from transformers import GenerationConfig

    from entrgi_core.tinyworld.tokenizers import build_dlm_tokenizer

    tok = build_dlm_tokenizer()
    tok.add_special_tokens({"additional_special_tokens": ["<|im_end|>", "<|endoftext|>"]})
    tok.chat_template = ("{% for m in messages %}{{ m['role'] }} : {{ m['content'] }}"
                         "{% if m['role'] == 'assistant' %}<|im_end|>{% endif %} {% endfor %}"
                         "{% if add_generation_prompt %}assistant :{% endif %}")
    turn_end, text_end = tok.convert_tokens_to_ids(["<|im_end|>", "<|endoftext|>"])
    model = world[0].model
    model.generation_config = GenerationConfig(eos_token_id=[tok.eos_token_id, text_end])
    try:
        dream = DreamLM.from_model(model, tok)
        hook = DreamGuidanceHook(world_rm, EntRGi(steps=1), tokenizer=tok, prompts=PROMPTS[:1], temperature=0.7,
                                 generation_config=model.generation_config)
    finally:
        del model.generation_config
    assert tuple(hook.stop_list) == dream.stop_ids
    assert {turn_end, text_end, tok.eos_token_id, tok.pad_token_id} == set(dream.stop_ids)
    assert dream.mask_id not in dream.stop_ids
    words = tok("the hotel was great", add_special_tokens=False)["input_ids"]
    for stop in (turn_end, text_end):                      # both cut the response where the adapter does
        row = [hook.mask_id] + words[:2] + [stop] + words[2:]     # a masked position, then "the hotel", stop
        assert dream.response_text(row) == "the hotel"
        seen = []

        class Spy(EntRGi):
            def refine(self, phi, step):
                (part,) = step.side.parts
                relaxed = part.vocab.table[:1].expand(phi.shape[0], -1)
                seen.append(int(step.canvas.inputs(part.vocab, relaxed, phi, step.stop_ids)[1].sum()))
                return super().refine(phi, step)

        spy = DreamGuidanceHook(world_rm, Spy(steps=1), tokenizer=tok, prompts=PROMPTS[:1], temperature=0.7,
                                generation_config=GenerationConfig(eos_token_id=[tok.eos_token_id, text_end]))
        x = torch.tensor([[5, 6, 7] + row])
        logits = torch.randn(1, x.shape[1], len(tok))
        logits[..., words[0]] += 100                       # the masked position reads as a word, not a stop
        spy(0, x, logits)
        assert seen == [3]                                 # the reward model reads the relaxed slot and "the hotel"


def test_generate_runs_diffusion_gemma_through_its_own_loop(gemma_path, world_rm):
    model = DiffusionGemmaLM(str(gemma_path), dtype="float32")
    cfg = DenoiseConfig(steps=8, max_new_tokens=12, num_samples=3, top_p=1.0, seed=4)
    plain = generate(model, PROMPTS[:3], reward=world_rm, config=cfg, prompt_ids=["a", "b", "c"])
    guided = generate(model, PROMPTS[:3], reward=world_rm, guidance=EntRGi(steps=2), config=cfg,
                      prompt_ids=["a", "b", "c"])
    assert guided.tokens.shape == (3, 3, 12) and guided.rewards.shape == (3, 3)
    assert float(guided.avg_reward.mean()) > float(plain.avg_reward.mean())
    alone = generate(model, PROMPTS[1:2], reward=world_rm, guidance=EntRGi(steps=2), config=cfg, prompt_ids=["b"])
    assert torch.equal(alone.tokens[0], guided.tokens[1])                  # a prompt's samples are its own
    c = {k: v[0] for k, v in guided.compute.items()}
    assert c["dlm_forwards"] == 3 * 8 * 2                                  # K x steps x 2 canvases
    assert c["rm_backwards"] == 3 * 8 * 2 * 2 and c["rm_forwards"] == c["rm_backwards"]
    assert c["select_calls"] == 3                                          # Top@1 of the 3 responses
    with pytest.raises(ValueError, match="on_step needs entrgi's sampler, and DiffusionGemmaLM runs its own loop"):
        generate(model, PROMPTS[:1], reward=world_rm, config=cfg, on_step=lambda index, tokens: None)


def test_diffusion_gemma_adapter_errors(gemma_path, world_rm, tiny_dlm_path):
    model = DiffusionGemmaLM(str(gemma_path), dtype="float32")
    with pytest.raises(ValueError, match="no top_p=0.95 \\(set --sampling.top_p 1.0\\)"):
        generate(model, PROMPTS[:1], reward=world_rm, config=DenoiseConfig())
    with pytest.raises(ValueError, match="needs a sampler that resamples rows"):
        generate(model, PROMPTS[:1], reward=world_rm, guidance=SMC(EntRGi()),
                 config=DenoiseConfig(top_p=1.0, max_new_tokens=8))
    bert = MaskedLM.from_pretrained(str(tiny_dlm_path))
    with pytest.raises(ValueError, match="needs a DiffusionGemmaForBlockDiffusion, got BertForMaskedLM"):
        DiffusionGemmaLM.from_model(bert.model, bert.tokenizer)


@pytest.mark.slow
def test_entrgi_predict_runs_a_diffusion_gemma_config(gemma_path, tmp_path):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": p, "id": f"p{i}"}) + "\n" for i, p in enumerate(PROMPTS[:4])))
    cfg = {
        "dlm": {"class_path": "entrgi_core.diffusion_gemma.DiffusionGemmaLM",
                "init_args": {"path": str(gemma_path), "dtype": "float32"}},
        "reward": {"class_path": "rewards.hf.HFRewardModel", "init_args": {"path": str(tinyworld.rm_path())}},
        "guidance": {"class_path": "guidance.EntRGi", "init_args": {"steps": 1}},
        "sampling": {"steps": 4, "max_new_tokens": 8, "num_samples": 2, "top_p": 1.0},
        "data": {"path": str(prompts), "id_field": "id", "batch_size": 2},
        "trainer": {"accelerator": "cpu", "devices": 1},
    }
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    cli("predict", "--config", str(path), "--output_dir", str(tmp_path / "one"))
    cli("predict", "--config", str(path), "--output_dir", str(tmp_path / "two"), "--trainer.devices", "2",
        "--trainer.strategy", "ddp")
    one = read_jsonl(tmp_path / "one" / "predictions.jsonl")
    assert [r["prompt_id"] for r in one] == ["p0", "p1", "p2", "p3"]
    assert all(len(r["responses"]) == 2 and "best_reward" in r and r["compute"]["dlm_forwards"] == 2 * 4 for r in one)
    assert strip(one) == strip(read_jsonl(tmp_path / "two" / "predictions.jsonl"))
    bad = cli("predict", "--config", str(path), "--output_dir", str(tmp_path / "bad"), "--sampling.top_p", "0.9",
              check=False)
    assert bad.returncode != 0 and "set --sampling.top_p 1.0" in bad.stderr
