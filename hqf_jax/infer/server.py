"""An HTTP server over the batcher (stdlib only): ``python -m serve --run RUN`` starts it.

    POST /v1/completions  {"prompt": str, "max_tokens": int, "temperature": float, "top_p": float,
                           "top_k": int, "seed": int, "stream": bool}
        -> {"object": "text_completion", "choices": [{"text", "index", "finish_reason"}], "usage": {...}}
           or, with "stream": true, server-sent events ``data: {"choices": [{"text": ...}]}`` then
           ``data: [DONE]``. A token is a byte: max_tokens counts bytes, the text is their UTF-8 decoding.
    GET /health           -> {"status": "ok", "slots", "active", "queued", "chunks"}

Every bad request gets a 4xx with {"error": {"message", "type"}} naming what to change; the server keeps
serving.
"""

from __future__ import annotations

import json
import math
import threading
import time
import uuid
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from hqf_jax.infer.batcher import Batcher
from hqf_jax.infer.requests import Request, utf8_pieces


class BadRequest(Exception):
    def __init__(self, status: HTTPStatus, message: str):
        super().__init__(message)
        self.status = status


class Limits:
    def __init__(self, max_prompt_bytes: int = 4096, max_tokens: int = 1024):
        self.max_prompt_bytes, self.max_tokens = int(max_prompt_bytes), int(max_tokens)


def parse_request(body: bytes, limits: Limits) -> tuple[Request, bool]:
    """(request, stream) from a POST body, or BadRequest naming the fix."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise BadRequest(HTTPStatus.BAD_REQUEST, "the request body is not valid UTF-8: send UTF-8 encoded JSON")
    try:
        d = json.loads(text)
    except json.JSONDecodeError as e:
        raise BadRequest(HTTPStatus.BAD_REQUEST, f"the request body is not valid JSON ({e})")
    if not isinstance(d, dict):
        raise BadRequest(HTTPStatus.BAD_REQUEST, "the request body must be a JSON object such as "
                                                 '{"prompt": "def ", "max_tokens": 64}')
    known = {"prompt", "max_tokens", "temperature", "top_p", "top_k", "seed", "stream", "model"}
    if unknown := sorted(set(d) - known):
        raise BadRequest(HTTPStatus.BAD_REQUEST, f"unknown field(s) {unknown}; valid fields: {sorted(known)}")
    prompt = d.get("prompt", "")
    if not isinstance(prompt, str):
        raise BadRequest(HTTPStatus.BAD_REQUEST, '"prompt" must be a string')
    try:
        raw = prompt.encode("utf-8")
    except UnicodeEncodeError:
        raise BadRequest(HTTPStatus.BAD_REQUEST, '"prompt" is not valid UTF-8 (it holds a lone surrogate escape)')
    if len(raw) > limits.max_prompt_bytes:
        raise BadRequest(HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                         f"the prompt has {len(raw)} bytes; this server takes at most {limits.max_prompt_bytes} "
                         "(shorten it, or restart the server with a larger --max-prompt)")

    def number(name, default, kind, lo=None, hi=None, lo_open=False):
        x = d.get(name, default)
        if isinstance(x, bool) or not isinstance(x, (int, float) if kind is float else int):
            raise BadRequest(HTTPStatus.BAD_REQUEST, f'"{name}" must be a{"" if kind is int else " finite"} '
                                                     f'{"integer" if kind is int else "number"}')
        if kind is float and not math.isfinite(x):
            raise BadRequest(HTTPStatus.BAD_REQUEST, f'"{name}" must be finite')
        if lo is not None and (x <= lo if lo_open else x < lo) or hi is not None and x > hi:
            rng = f"{'(' if lo_open else '['}{lo}, {hi if hi is not None else 'inf'}]"
            raise BadRequest(HTTPStatus.BAD_REQUEST, f'"{name}" = {x} is outside {rng}')
        return kind(x)

    max_tokens = number("max_tokens", 16, int, 0, limits.max_tokens)
    req = Request(raw, max_tokens, number("temperature", 1.0, float, 0.0), number("top_p", 1.0, float, 0.0, 1.0, True),
                  number("top_k", 0, int, 0), number("seed", 0, int, 0, (1 << 32) - 1))
    stream = d.get("stream", False)
    if not isinstance(stream, bool):
        raise BadRequest(HTTPStatus.BAD_REQUEST, '"stream" must be true or false')
    return req, stream


def make_handler(batcher: Batcher, limits: Limits, model_name: str):
    class Handler(BaseHTTPRequestHandler):
        server_version = "hqf-serve/1"

        def log_message(self, fmt, *args):  # quiet: one line per request would flood a load test
            pass

        def _json(self, status, obj):
            data = json.dumps(obj).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _error(self, status, message):
            self._json(status, {"error": {"message": message, "type": "invalid_request_error"
                                          if 400 <= status < 500 else "server_error"}})

        def do_GET(self):
            if self.path.rstrip("/") == "/health":
                self._json(200, {"status": "ok", "model": model_name, **batcher.stats()})
            else:
                self._error(404, f"no route GET {self.path}: use GET /health or POST /v1/completions")

        def do_POST(self):
            if self.path.rstrip("/") != "/v1/completions":
                return self._error(404, f"no route POST {self.path}: use POST /v1/completions")
            try:
                n = int(self.headers.get("Content-Length", ""))
            except ValueError:
                return self._error(411, "send a Content-Length header with the JSON body")
            cap = 4 * limits.max_prompt_bytes + 4096  # JSON escapes can take several bytes per prompt byte
            if n < 0 or n > cap:
                self.close_connection = True
                return self._error(413, f"the body has {n} bytes; at most {cap} are read (prompt limit "
                                        f"{limits.max_prompt_bytes} bytes)")
            try:
                req, stream = parse_request(self.rfile.read(n), limits)
            except BadRequest as e:
                return self._error(int(e.status), str(e))
            batcher.submit(req)
            rid = "cmpl-" + uuid.uuid4().hex[:16]
            try:
                if stream:
                    self._stream(req, rid)
                else:
                    text = "".join(utf8_pieces(req.chunks()))
                    self._json(200, {"id": rid, "object": "text_completion", "created": int(time.time()),
                                     "model": model_name,
                                     "choices": [{"text": text, "index": 0, "finish_reason": "length"}],
                                     "usage": {"prompt_tokens": len(req.prompt), "completion_tokens": req.emitted,
                                               "total_tokens": len(req.prompt) + req.emitted}})
            except RuntimeError as e:
                self._error(500, str(e))

        def _stream(self, req, rid):
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Cache-Control", "no-cache")
            self.send_header("Connection", "close")
            self.end_headers()
            self.close_connection = True
            try:
                for piece in utf8_pieces(req.chunks()):
                    event = {"id": rid, "object": "text_completion", "model": model_name,
                             "choices": [{"text": piece, "index": 0, "finish_reason": None}]}
                    self.wfile.write(b"data: " + json.dumps(event).encode() + b"\n\n")
                    self.wfile.flush()
                end = {"id": rid, "object": "text_completion", "model": model_name,
                       "choices": [{"text": "", "index": 0, "finish_reason": "length"}]}
                self.wfile.write(b"data: " + json.dumps(end).encode() + b"\n\ndata: [DONE]\n\n")
            except RuntimeError as e:
                self.wfile.write(b"data: " + json.dumps({"error": {"message": str(e)}}).encode() + b"\n\n")
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client left; the request finishes in its slot and is dropped

    return Handler


class Server:
    """The HTTP server and its batcher; ``start()`` serves from a thread, ``serve_forever()`` blocks."""

    def __init__(self, batcher: Batcher, host: str = "127.0.0.1", port: int = 8000, limits: Limits | None = None,
                 model_name: str = "hqf-byte-lm"):
        self.batcher = batcher
        self.httpd = ThreadingHTTPServer((host, port), make_handler(batcher, limits or Limits(), model_name))
        self.httpd.daemon_threads = True
        self._thread = None

    @property
    def port(self) -> int:
        return self.httpd.server_address[1]

    @property
    def url(self) -> str:
        return f"http://{self.httpd.server_address[0]}:{self.port}"

    def start(self) -> "Server":
        self._thread = threading.Thread(target=self.httpd.serve_forever, name="hqf-http", daemon=True)
        self._thread.start()
        return self

    def serve_forever(self):
        self.httpd.serve_forever()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()
        self.batcher.stop()
