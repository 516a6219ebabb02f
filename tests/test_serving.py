"""entrgi serve's request layer (entrgi_core.serving): OpenAI bodies checked against the server's
limits before any compute, compatible requests batched into one generate with a seed each (a
request's result does not depend on its batch), OpenAI-shaped responses."""
from dataclasses import replace

import pytest

from entrgi_core import generate
from entrgi_core.serving import (
    RequestError,
    ServeLimits,
    compatible,
    parse_chat,
    parse_completion,
    respond,
    run_requests,
)
from guidance import EntRGi
from tests.helpers import PROMPTS, small_config

LIMITS = ServeLimits(max_samples=4, max_steps=8, max_tokens=8, max_prompt_chars=200)
BASE = small_config()                         # T=4, L=6 (helpers), K from each request


def body(**kw):
    out = {"model": "tiny", "prompt": PROMPTS[0], "max_tokens": 6, "seed": 3,
           "entrgi": {"num_samples": 2, "steps": 4}}
    out.update(kw)
    return out


@pytest.mark.parametrize("bad,status,message", [
    ([], 400, "the body must be a JSON object, got list"),
    (body(prompt=3), 400, "prompt must be a string (one prompt per request), got 3"),
    (body(prompt=["a", "b"]), 400, "prompt must be a string (one prompt per request)"),
    (body(prompt="   "), 400, "the prompt is empty"),
    (body(prompt="x" * 201), 422, "the prompt has 201 characters; this server takes at most 200"),
    (body(max_tokens=9), 422, "max_tokens must lie in [1, 8] on this server, got 9"),
    (body(max_tokens="6"), 400, "max_tokens must be an integer, got '6'"),
    (body(n=3), 422, "entrgi.num_samples must lie in [3, 4] on this server, got 2"),
    (body(seed=-1), 422, "seed must lie in [0, None] on this server, got -1"),
    (body(stream="yes"), 400, "stream must be true or false, got 'yes'"),
    (body(temperature=3), 400, "temperature must be a number in [0, 2], got 3"),
    (body(temperature="0.7"), 400, "temperature must be a number in [0, 2], got '0.7'"),
    (body(stop=[""]), 400, "stop must be a non-empty string or a list of at most 16 of them"),
    (body(stop=["."] * 17), 400, "stop must be a non-empty string or a list of at most 16 of them"),
    (body(entrgi={"num_samples": 5}), 422, "entrgi.num_samples must lie in [1, 4] on this server, got 5"),
    (body(entrgi={"steps": 7}), 422, "entrgi.steps (7) must not exceed max_tokens (6)"),
    (body(entrgi={"temperature": 1}), 400, "entrgi has unknown fields ['temperature']"),
    (body(entrgi={"guidance": "guidance.SMC"}), 422, "entrgi.guidance 'guidance.SMC' is not allowed on this server"),
    (body(entrgi={"guidance": {"class_path": "os.system"}}), 422, "'os.system' is not allowed on this server"),
    (body(entrgi={"guidance": {"class_path": "guidance.EntRGi", "init_args": {"steps": -1}}}), 422,
     "entrgi.guidance: EntRGi: steps (M) must be an integer >= 0, got -1"),
    (body(entrgi={"guidance": {"class_path": "guidance.EntRGi", "init_args": {"stepz": 1}}}), 422,
     "unexpected keyword argument 'stepz'"),
])
def test_bad_completion_requests_are_refused_with_their_status_and_one_line(bad, status, message):
    with pytest.raises(RequestError) as err:
        parse_completion(bad, LIMITS, config_steps=4)
    assert err.value.status == status and message in err.value.message and "\n" not in err.value.message


def test_bad_chat_requests():
    for bad, message in (({"messages": []}, "messages must be a non-empty list"),
                         ({"messages": [{"role": "system", "content": "x"}, {"role": "user", "content": "y"}]},
                          "one user message per chat request")):
        with pytest.raises(RequestError, match=message):
            parse_chat(bad, LIMITS)
    req = parse_chat({"messages": [{"role": "user", "content": PROMPTS[1]}], "seed": 2}, LIMITS, config_steps=4)
    assert req.chat and req.prompt == PROMPTS[1] and req.seed == 2 and req.steps == 4


def test_defaults_come_from_the_servers_limits():
    req = parse_completion({"prompt": "hello"}, LIMITS, config_steps=4)
    assert (req.n, req.num_samples, req.steps, req.max_tokens, req.seed, req.guidance) == (1, 4, 4, 8, 0, None)
    req = parse_completion(body(entrgi={"guidance": "guidance.EntRGi"}), LIMITS, config_steps=4)
    assert req.guidance == {"class_path": "guidance.EntRGi", "init_args": {}} and isinstance(req.make_guidance(), EntRGi)


@pytest.mark.parametrize("guided", [False, True], ids=["unguided", "entrgi"])
def test_a_requests_result_does_not_depend_on_its_batch(dlm, rm, guided):
    """Three compatible requests with their own seeds, run as one generate: each gets exactly what
    generate gives its prompt alone with its seed."""
    g = {"guidance": {"class_path": "guidance.EntRGi", "init_args": {"steps": 1}}} if guided else {}
    reqs = [parse_completion(body(prompt=p, seed=s, entrgi={"num_samples": 2, "steps": 4, **g}), LIMITS)
            for p, s in zip(PROMPTS, (3, 7, 3))]
    assert len({compatible(r) for r in reqs}) == 1
    res = run_requests(dlm, rm, BASE, reqs)
    for b, r in enumerate(reqs):
        cfg = replace(BASE, num_samples=2, steps=4, max_new_tokens=6, seed=r.seed)
        alone = generate(dlm, [r.prompt], reward=rm, guidance=r.make_guidance(), config=cfg)
        assert alone.texts[0] == res.texts[b]
        out = respond(r, res, b, "tiny")
        assert out["choices"][0]["text"] == alone.texts[0][int(alone.best_index[0])]
        assert out["entrgi"]["reward"] == pytest.approx(float(alone.best_reward[0]))
        assert out["object"] == "text_completion" and out["usage"]["total_tokens"] > 0


def test_responses_give_the_n_best_choices_and_samples_on_request(dlm, rm):
    req = parse_completion(body(n=2, entrgi={"num_samples": 3, "steps": 4, "return_samples": True}), LIMITS)
    res = run_requests(dlm, rm, BASE, [req])
    out = respond(req, res, 0, "tiny")
    rewards = out["entrgi"]["choice_rewards"]
    assert len(out["choices"]) == 2 and rewards[0] == max(out["entrgi"]["rewards"]) and rewards[0] >= rewards[1]
    assert len(out["entrgi"]["samples"]) == 3 and out["entrgi"]["compute"]["forward_equivalents"] > 0
    chat = replace(req, chat=True, return_samples=False)
    reply = respond(chat, res, 0, "tiny")
    assert reply["object"] == "chat.completion" and reply["choices"][0]["message"]["role"] == "assistant"
    assert "samples" not in reply["entrgi"]
    with pytest.raises(ValueError, match="not compatible"):
        run_requests(dlm, rm, BASE, [req, replace(req, steps=2)])


# ----------------------------------------------------------------------------- the server, through a real client


def test_temperature_and_stop_as_local_completions_sends_them(dlm, rm):
    """lm-eval's local-completions sends temperature and stop: the sampler takes the temperature (it
    splits batches), and every returned text is cut before its first stop string."""
    reqs = [parse_completion(body(temperature=t, seed=s, stop=stop), LIMITS, config_steps=4)
            for t, s, stop in ((0.0, 1, None), (0.0, 2, "the"), (1.3, 1, ["the", "was"]))]
    assert reqs[0].stop == () and reqs[1].stop == ("the",) and reqs[2].stop == ("the", "was")
    assert compatible(reqs[0]) == compatible(reqs[1]) != compatible(reqs[2])
    for req in reqs:
        res = run_requests(dlm, rm, BASE, [req])
        alone = generate(dlm, [req.prompt], reward=rm, config=replace(BASE, num_samples=2, steps=4, max_new_tokens=6,
                                                                      seed=req.seed, temperature=req.temperature))
        full = alone.texts[0][int(alone.best_index[0])]
        cuts = [i for i in (full.find(s) for s in req.stop) if i >= 0]
        assert respond(req, res, 0, "tiny")["choices"][0]["text"] == (full[:min(cuts)] if cuts else full)
    default = parse_completion(body(), LIMITS, config_steps=4)
    assert default.temperature is None and run_requests(dlm, rm, BASE, [default]).texts == \
        generate(dlm, [default.prompt], reward=rm, config=replace(BASE, num_samples=2, steps=4, max_new_tokens=6,
                                                                  seed=3)).texts


def test_a_default_guidance_applies_only_where_a_request_names_none():
    from entrgi_core.errors import InputError
    from entrgi_core.serving.requests import check_default_guidance, parse_guidance_arg

    limits = replace(LIMITS, default_guidance=check_default_guidance(parse_guidance_arg(
        '{"class_path": "guidance.EntRGi", "init_args": {"steps": 1}}'), LIMITS))
    assert parse_completion(body(entrgi={}), limits, 4).guidance == {"class_path": "guidance.EntRGi",
                                                                     "init_args": {"steps": 1}}
    assert parse_completion(body(entrgi={"guidance": None}), limits, 4).guidance is None
    assert parse_guidance_arg("none") is None and parse_guidance_arg("guidance.Expectation") == "guidance.Expectation"
    with pytest.raises(InputError, match="the default guidance: entrgi.guidance 'guidance.SMC' is not allowed"):
        check_default_guidance("guidance.SMC", LIMITS)
    with pytest.raises(InputError, match="the default guidance is not valid JSON"):
        parse_guidance_arg("{class_path: x}")


@pytest.fixture
def server(cli_config):
    """`entrgi serve` on the random tiny models, on a free loopback port (stopped with SIGTERM)."""
    import socket
    import subprocess
    import sys
    import time
    import urllib.request

    from tests.helpers import ROOT
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "entrgi_core.cli", "serve", "--config", str(cli_config),
                             "--port", str(port), "--max-batch-size", "4"], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    for _ in range(240):
        try:
            if urllib.request.urlopen(url + "/health", timeout=1).status == 200:
                break
        except OSError:
            time.sleep(0.5)
        if proc.poll() is not None:
            raise RuntimeError(proc.stderr.read()[-2000:])
    yield url, proc
    proc.terminate()
    proc.wait(timeout=120)


@pytest.mark.slow
def test_the_openai_client_gets_what_generate_gives(server, cli_config):
    server, _ = server
    """The `openai` client (nobody here wrote it) against `entrgi serve`: completions and chat, guided
    and unguided, streamed and not, equal generate's Top@1 for the same seed and settings; a bad
    request is its 4xx."""
    import json as _json
    import urllib.error
    import urllib.request

    import openai
    import yaml

    from entrgi_core import MaskedLM
    from rewards import HFRewardModel
    cfg = yaml.safe_load(cli_config.read_text())
    dlm = MaskedLM(cfg["dlm"]["init_args"]["path"])
    rm = HFRewardModel(cfg["reward"]["init_args"]["path"])
    client = openai.OpenAI(base_url=server + "/v1", api_key="none", max_retries=0)
    assert [m.id for m in client.models.list().data] == [dlm.name]
    guided = {"class_path": "guidance.EntRGi", "init_args": {"steps": 1}}
    for strategy in (None, guided):
        ext = {"num_samples": 2, "steps": 4, "guidance": strategy}
        out = client.completions.create(model=dlm.name, prompt=PROMPTS[0], max_tokens=8, seed=5,
                                        extra_body={"entrgi": ext})
        chat = client.chat.completions.create(model=dlm.name, messages=[{"role": "user", "content": PROMPTS[1]}],
                                              max_tokens=8, seed=6, extra_body={"entrgi": ext})
        for prompt, seed, reply, text in ((PROMPTS[0], 5, out, out.choices[0].text),
                                          (PROMPTS[1], 6, chat, chat.choices[0].message.content)):
            config = replace(BASE, num_samples=2, steps=4, max_new_tokens=8, seed=seed)
            alone = generate(dlm, [prompt], reward=rm, guidance=EntRGi(steps=1) if strategy else None, config=config)
            assert text == alone.texts[0][int(alone.best_index[0])]
            assert reply.model_extra["entrgi"]["reward"] == pytest.approx(float(alone.best_reward[0]), abs=1e-5)
            assert reply.model_extra["entrgi"]["guidance"] == strategy
        stream = client.completions.create(model=dlm.name, prompt=PROMPTS[0], max_tokens=8, seed=5, stream=True,
                                           extra_body={"entrgi": ext})
        chunks = list(stream)
        assert [c.model_extra["entrgi"]["step"] for c in chunks[:-1]] == [0, 1, 2, 3]   # one event per step
        assert "".join(c.choices[0].text for c in chunks) == out.choices[0].text      # the same answer
        chat_stream = client.chat.completions.create(model=dlm.name, messages=[{"role": "user", "content": PROMPTS[1]}],
                                                     max_tokens=8, seed=6, stream=True, extra_body={"entrgi": ext})
        assert "".join(c.choices[0].delta.content or "" for c in chat_stream) == chat.choices[0].message.content
    with pytest.raises(openai.UnprocessableEntityError, match="entrgi.num_samples must lie in"):
        client.completions.create(model=dlm.name, prompt=PROMPTS[0], max_tokens=8, extra_body={"entrgi": {"num_samples": 99}})
    request = urllib.request.Request(server + "/v1/completions", data=b"{not json", method="POST")
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(request, timeout=30)
    assert err.value.code == 400 and "not valid JSON" in _json.loads(err.value.read())["error"]["message"]
    ok = client.completions.create(model=dlm.name, prompt=PROMPTS[2], max_tokens=8, extra_body={"entrgi": {"steps": 4}})
    assert ok.choices[0].text is not None                        # the server goes on serving


@pytest.mark.slow
def test_sigterm_lets_an_in_flight_request_finish_then_everything_exits(server):
    import json as _json
    import threading
    import time
    import urllib.request

    url, proc = server
    body = _json.dumps({"prompt": PROMPTS[0], "max_tokens": 32, "seed": 1,
                        "entrgi": {"num_samples": 16, "steps": 32,
                                   "guidance": {"class_path": "guidance.EntRGi", "init_args": {"steps": 3}}}}).encode()
    answer = {}

    def call():
        with urllib.request.urlopen(urllib.request.Request(url + "/v1/completions", data=body, method="POST"),
                                    timeout=120) as r:
            answer["status"], answer["body"] = r.status, _json.loads(r.read())
        answer["done"] = time.perf_counter()

    thread = threading.Thread(target=call)
    thread.start()
    time.sleep(1.0)                                   # the request is in flight
    proc.terminate()
    terminated = time.perf_counter()
    thread.join(timeout=120)
    assert answer.get("status") == 200 and answer["body"]["choices"][0]["text"] is not None
    assert answer["done"] > terminated                # it was answered after the SIGTERM
    assert proc.wait(timeout=120) is not None


# ----------------------------------------------------------------------------- streaming and clients that leave

def lines_of(outputs, i):
    """Request i's non-empty lines from answer()'s output, parsed."""
    import json as _json
    return [_json.loads(line) for out in outputs for line in [out[i]] if line]


def test_answer_streams_each_steps_canvas_and_ends_with_what_respond_gives(dlm, rm):
    from entrgi_core.serving.batch import answer
    g = {"guidance": {"class_path": "guidance.EntRGi", "init_args": {"steps": 1}}}
    streamed = parse_completion(body(stream=True, entrgi={"num_samples": 2, "steps": 4, **g}), LIMITS)
    plain = parse_completion(body(prompt=PROMPTS[1], seed=7, entrgi={"num_samples": 2, "steps": 4, **g}), LIMITS)
    outputs = list(answer(dlm, rm, BASE, [streamed, plain], name="tiny"))
    steps, (final,) = lines_of(outputs, 0)[:-1], lines_of(outputs, 0)[-1:]
    assert [e["step"] for e in steps] == [0, 1, 2, 3] and all(e["total"] == 4 for e in steps)
    assert all(len(e["canvas"]) == 2 for e in steps)
    masks = [sum(c.count("[MASK]") for c in e["canvas"]) for e in steps]
    assert masks == sorted(masks, reverse=True) and masks[0] > 0 and masks[-1] == 0
    assert lines_of(outputs, 1) == [lines_of(outputs, 1)[-1]] and "final" in lines_of(outputs, 1)[0]  # no steps
    res = run_requests(dlm, rm, BASE, [streamed, plain])
    for i, req in enumerate((streamed, plain)):
        got = lines_of(outputs, i)[-1]["final"]
        want = respond(req, res, i, "tiny")
        assert got["choices"] == want["choices"] and got["entrgi"]["reward"] == want["entrgi"]["reward"]
    assert [c.split() for c in steps[-1]["canvas"]] == [t.split() for t in res.texts[0]]


class MarkedAfter:
    """Cancellations whose every request counts as gone after ``n`` reads."""

    def __init__(self, n):
        self.n, self.reads, self.cleared = n, 0, []

    def gone(self, rid):
        self.reads += 1
        return self.reads > self.n

    def clear(self, rid):
        self.cleared.append(rid)


def test_a_client_that_leaves_stops_its_generate_and_a_queued_one_is_dropped(dlm, rm, tmp_path):
    from entrgi_core.serving.batch import answer
    from entrgi_core.serving.cancel import Cancellations
    req = replace(parse_completion(body(stream=True), LIMITS), rid="a" * 32)
    said = []
    outputs = list(answer(dlm, rm, BASE, [req], name="tiny", cancels=MarkedAfter(3), log=said.append))
    events = lines_of(outputs, 0)
    assert [e["step"] for e in events[:-1]] == [0, 1] and events[-1] == {"error": [499, "the client disconnected"]}
    assert said == ["stopped a generate of 1 request(s) after step 3 of 4: every client disconnected"]
    cancels = Cancellations(tmp_path)
    other = replace(parse_completion(body(seed=9), LIMITS), rid="b" * 32)
    cancels.mark(req.rid)
    said.clear()
    outputs = list(answer(dlm, rm, BASE, [req, other], name="tiny", cancels=cancels, log=said.append))
    assert lines_of(outputs, 0) == [{"error": [499, "the client disconnected"]}]
    assert "final" in lines_of(outputs, 1)[-1]                        # its batch mate is answered
    assert said == ["dropped 1 queued request(s) whose clients disconnected"]
    assert not list(tmp_path.iterdir())                               # every mark was read and removed
    with pytest.raises(ValueError, match="32 lowercase hex digits"):
        cancels.mark("../x")


def _asgi(app, body_bytes, *, leave=False):
    """Run the ASGI ``app`` on one POST to /v1/completions; return (status, headers, body) as the
    client sees them. ``leave``: the client disconnects once the request is sent."""
    import asyncio

    sent = []

    async def main():
        queue = asyncio.Queue()
        await queue.put({"type": "http.request", "body": body_bytes, "more_body": False})
        if leave:
            await queue.put({"type": "http.disconnect"})

        async def receive():
            return await queue.get()

        async def send(message):
            sent.append(message)

        scope = {"type": "http", "path": "/v1/completions", "method": "POST", "headers": []}
        await app(scope, receive, send)

    asyncio.run(main())
    start = next(m for m in sent if m["type"] == "http.response.start")
    return start["status"], dict(start["headers"]), b"".join(m.get("body", b"") for m in sent[1:])


def worker(*lines, status=200):
    """An inner ASGI app that answers like LitServe's streaming response with ``lines``."""
    async def app(scope, receive, send):
        message = await receive()
        assert message["type"] == "http.request" and b"_entrgi_id" in message["body"]
        await send({"type": "http.response.start", "status": status, "headers": []})
        for line in lines:
            await send({"type": "http.response.body", "body": line.encode(), "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})
    return app


def test_the_gate_collapses_a_stream_or_sends_events_and_keeps_error_statuses(tmp_path):
    import json as _json

    from entrgi_core.serving import events
    from entrgi_core.tools.serve import OpenAIGate
    final = {"id": "x", "object": "text_completion", "created": 1, "model": "tiny",
             "choices": [{"index": 0, "text": "good", "finish_reason": "stop", "logprobs": None},
                         {"index": 1, "text": "fine", "finish_reason": "stop", "logprobs": None}],
             "usage": {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3}, "entrgi": {"reward": 0.5}}
    lines = [events.step_line(0, 2, ["[MASK] good", "[MASK] fine"]), events.step_line(1, 2, ["good", "fine"]),
             events.final_line(final)]
    gate = lambda app: OpenAIGate(app, limits=LIMITS, config_steps=4)            # noqa: E731
    status, headers, data = _asgi(gate(worker(*lines)), _json.dumps(body()).encode())
    got = _json.loads(data)
    assert status == 200 and headers[b"content-type"] == b"application/json"
    assert got["choices"] == final["choices"] and got["id"].startswith("cmpl-")
    status, headers, data = _asgi(gate(worker(*lines)), _json.dumps(body(stream=True)).encode())
    chunks = [c[len("data: "):] for c in data.decode().split("\n\n") if c]
    assert status == 200 and headers[b"content-type"] == b"text/event-stream" and chunks[-1] == "[DONE]"
    parsed = [_json.loads(c) for c in chunks[:-1]]
    assert [p["entrgi"].get("step") for p in parsed[:2]] == [0, 1] and all(p["choices"][0]["text"] == "" for p in parsed[:2])
    assert [p["choices"][0]["text"] for p in parsed[2:]] == ["good", "fine"] and parsed[2]["usage"]["total_tokens"] == 3
    assert len({p["id"] for p in parsed}) == 1
    status, _, data = _asgi(gate(worker(events.error_line(422, "InputError: bad"))), _json.dumps(body()).encode())
    assert status == 422 and _json.loads(data)["error"]["message"] == "InputError: bad"
    status, _, data = _asgi(gate(worker(lines[0], events.error_line(500, "RuntimeError: boom"))),
                            _json.dumps(body(stream=True)).encode())
    assert status == 200 and data.decode().rstrip().endswith('"code": 500}}')          # an error event ends it
    status, _, data = _asgi(gate(worker(lines[0])), _json.dumps(body()).encode())
    assert status == 500 and "ended without an answer" in _json.loads(data)["error"]["message"]
    status, _, data = _asgi(gate(worker('{"detail": "Request timed out"}', status=504)), _json.dumps(body()).encode())
    assert status == 504 and b"timed out" in data                                   # LitServe's own failure
    refuse = OpenAIGate(worker(*lines), limits=LIMITS, config_steps=4, streams="Gemma runs its own loop")
    status, _, data = _asgi(refuse, _json.dumps(body(stream=True)).encode())
    assert status == 422 and "stream: true is not available: Gemma runs its own loop" in data.decode()


def test_the_gate_marks_a_request_whose_client_left(tmp_path):
    import asyncio
    import json as _json

    from entrgi_core.serving.cancel import Cancellations
    from entrgi_core.tools.serve import OpenAIGate
    cancels = Cancellations(tmp_path)
    seen = {}

    async def slow_worker(scope, receive, send):          # waits for the disconnect, as Starlette's stream does
        seen["rid"] = _json.loads((await receive())["body"])["_entrgi_id"]
        assert (await receive())["type"] == "http.disconnect"
        await asyncio.sleep(0)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    _asgi(OpenAIGate(slow_worker, limits=LIMITS, config_steps=4, cancels=cancels),
          _json.dumps(body()).encode(), leave=True)
    assert cancels.gone(seen["rid"])


@pytest.mark.slow
def test_a_client_that_disconnects_frees_its_slot(server):
    """A long guided request whose client leaves after a second is stopped at its next step (the
    server says so), and the next request does not wait for it."""
    import json as _json
    import socket
    import time
    import urllib.request
    from urllib.parse import urlparse

    url, proc = server
    long = _json.dumps({"prompt": PROMPTS[0], "max_tokens": 32, "seed": 1,
                        "entrgi": {"num_samples": 16, "steps": 32,
                                   "guidance": {"class_path": "guidance.EntRGi", "init_args": {"steps": 3}}}}).encode()
    short = _json.dumps({"prompt": PROMPTS[1], "max_tokens": 8, "entrgi": {"steps": 4}}).encode()

    def post(data):
        with urllib.request.urlopen(urllib.request.Request(url + "/v1/completions", data=data, method="POST"),
                                    timeout=300) as r:
            return _json.loads(r.read())

    started = time.perf_counter()
    post(long)
    alone = time.perf_counter() - started                     # what the long request takes, start to end
    where = urlparse(url)
    with socket.create_connection((where.hostname, where.port)) as sock:
        sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: " + str(len(long)).encode() + b"\r\n\r\n" + long)
        time.sleep(min(1.0, alone / 4))
    started = time.perf_counter()
    assert post(short)["choices"][0]["text"] is not None
    assert time.perf_counter() - started < alone / 2, "the next request waited for the abandoned one"
    proc.terminate()
    proc.wait(timeout=120)
    assert "stopped a generate of 1 request(s) after step" in proc.stderr.read()
