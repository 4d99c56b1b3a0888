"""The HTTP server on 127.0.0.1 with a real client: concurrent requests share the batched decode loop and get
what the engine gives each of them alone; bad requests get a clear 4xx and the server keeps serving."""

import http.client
import json
import threading

import pytest
from flax import nnx

from hqf_jax.infer import Engine
from hqf_jax.infer.batcher import Batcher
from hqf_jax.infer.server import Limits, Server
from hqf_jax.nn.retnet import RetNetConfig, RetNetLM


@pytest.fixture(scope="module")
def served():
    cfg = RetNetConfig(d_model=32, num_layers=2, num_heads=2, qk_dim=32, v_dim=64, ffn_dim=64, chunk_size=8)
    engine = Engine(RetNetLM(cfg, nnx.Rngs(0)), dtype="float32", prompt_bucket=16)
    server = Server(Batcher(engine, slots=3, chunk=8), port=0, limits=Limits(max_prompt_bytes=64, max_tokens=40))
    server.start()
    yield engine, server
    server.close()


def call(server, method, path, body=None, raw=None):
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=120)
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    conn.request(method, path, body=data, headers={"Content-Type": "application/json"})
    resp = conn.getresponse()
    out = resp.status, resp.getheader("Content-Type"), resp.read()
    conn.close()
    return out


def test_health(served):
    status, ctype, body = call(served[1], "GET", "/health")
    assert status == 200 and ctype == "application/json"
    assert json.loads(body)["status"] == "ok" and json.loads(body)["slots"] == 3


def test_concurrent_clients_get_what_the_engine_gives_alone(served):
    engine, server = served
    jobs = [dict(prompt=p, max_tokens=n, temperature=t, seed=s) for p, n, t, s in
            [("hello", 20, 0.0, 0), ("a longer prompt here", 13, 0.0, 0), ("x", 30, 1.0, 5),
             ("def f(", 9, 0.0, 0), ("", 17, 1.0, 11)]]  # 5 clients on 3 slots: some wait, all join mid-run
    results = [None] * len(jobs)

    def client(i):
        results[i] = call(server, "POST", "/v1/completions", jobs[i])

    threads = [threading.Thread(target=client, args=(i,)) for i in range(len(jobs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for job, (status, _, body) in zip(jobs, results):
        assert status == 200, body
        got = json.loads(body)
        alone = engine.generate_ids([job["prompt"].encode()], job["max_tokens"], seed=[job["seed"]],
                                    temperature=job["temperature"])[0]
        assert got["choices"][0]["text"] == bytes(int(i) for i in alone).decode("utf-8", "replace")
        assert got["usage"]["completion_tokens"] == job["max_tokens"]


def test_stream_is_server_sent_events_of_the_same_text(served):
    engine, server = served
    job = dict(prompt="stream me", max_tokens=25, temperature=0.0, stream=True)
    status, ctype, body = call(server, "POST", "/v1/completions", job)
    assert status == 200 and ctype == "text/event-stream"
    events = [e[len("data: "):] for e in body.decode().split("\n\n") if e.startswith("data: ")]
    assert events[-1] == "[DONE]"
    text = "".join(json.loads(e)["choices"][0]["text"] for e in events[:-1])
    _, _, plain = call(server, "POST", "/v1/completions", {**job, "stream": False})
    assert text == json.loads(plain)["choices"][0]["text"]
    assert len(events) >= 3  # several chunks, not one


@pytest.mark.parametrize("raw, status, words", [
    (b"{not json", 400, "not valid JSON"),
    (b"[1, 2]", 400, "JSON object"),
    (json.dumps({"prompt": "x" * 65}).encode(), 413, "at most 64"),
    (json.dumps({"prompt": "x", "max_tokens": -1}).encode(), 400, "max_tokens"),
    (json.dumps({"prompt": "x", "max_tokens": 41}).encode(), 400, "max_tokens"),
    (b'{"prompt": "\\ud800"}', 400, "not valid UTF-8"),
    (b'{"prompt": "\xff\xfe"}', 400, "not valid UTF-8"),
    (json.dumps({"prompt": "x", "temperature": -0.5}).encode(), 400, "temperature"),
    (json.dumps({"prompt": "x", "top_p": 0}).encode(), 400, "top_p"),
    (json.dumps({"prompt": "x", "stream": "yes"}).encode(), 400, "stream"),
    (json.dumps({"prompt": "x", "max_token": 3}).encode(), 400, "unknown field"),
])
def test_bad_requests_get_a_clear_4xx_and_the_server_keeps_serving(served, raw, status, words):
    got, _, body = call(served[1], "POST", "/v1/completions", raw=raw)
    assert got == status
    assert words in json.loads(body)["error"]["message"]
    ok, _, body = call(served[1], "POST", "/v1/completions", {"prompt": "still up", "max_tokens": 3})
    assert ok == 200 and json.loads(body)["usage"]["completion_tokens"] == 3


def test_unknown_route_and_zero_tokens(served):
    assert call(served[1], "GET", "/nope")[0] == 404
    status, _, body = call(served[1], "POST", "/v1/completions", {"prompt": "x", "max_tokens": 0})
    assert status == 200 and json.loads(body)["choices"][0]["text"] == ""
