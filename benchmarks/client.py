"""A small, strict client for SGLang's native ``/generate`` and the OpenAI completions API.

Every failure becomes an :class:`EndpointError` with one clear sentence (unreachable, timed out,
HTTP error with the body's first line, non-JSON reply, reply without the expected field);
every request has a bounded timeout, so a benchmark never hangs on a dead server.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any, Literal

import requests

Kind = Literal["generate", "openai"]


class EndpointError(RuntimeError):
    """The server could not be used; the message says why."""


@dataclass
class Completion:
    text: str
    ttft: float | None  # seconds from sending to the first streamed chunk (None: not streamed)
    cached_tokens: int | None = None  # prompt tokens the server found in its prefix cache (None: not reported)


@dataclass
class TokenCompletion:
    output_ids: list[int]
    ttft: float  # seconds from sending to the first streamed chunk
    e2e: float  # seconds from sending to the last chunk
    prompt_tokens: int
    cached_tokens: int  # of the prompt, read from the server's prefix cache


@dataclass
class Endpoint:
    base_url: str
    kind: Kind = "generate"
    timeout: float = 300.0  # seconds for one request, connect + read
    model: str | None = None  # OpenAI "model" field; discovered when None

    def __post_init__(self) -> None:
        self.base_url = self.base_url.rstrip("/")
        if self.kind not in ("generate", "openai"):
            raise ValueError(f"endpoint kind must be 'generate' or 'openai', not {self.kind!r}")
        self.session = requests.Session()

    def _send(self, method: str, path: str, timeout: float | None = None, **kw: Any) -> requests.Response:
        url = self.base_url + path
        limit = timeout or self.timeout
        try:
            resp = self.session.request(method, url, timeout=(min(10.0, limit), limit), **kw)
        except requests.exceptions.ConnectionError as e:
            raise EndpointError(f"cannot reach {url}: {_reason(e)}") from None
        except requests.exceptions.Timeout:
            raise EndpointError(f"{url} gave no reply within {limit:g} s") from None
        except requests.exceptions.RequestException as e:
            raise EndpointError(f"request to {url} failed: {e}") from None
        if resp.status_code != 200:
            first = (resp.text or "").strip().splitlines()[:1]
            raise EndpointError(f"{url} answered HTTP {resp.status_code}: {first[0][:300] if first else '(empty body)'}")
        return resp

    def _request(self, method: str, path: str, timeout: float | None = None, **kw: Any) -> Any:
        resp = self._send(method, path, timeout, **kw)
        return _json(resp.text, self.base_url + path)

    def health(self) -> None:
        """Raise unless ``/health`` answers 200 within 5 s."""
        url = self.base_url + "/health"
        try:
            resp = self.session.get(url, timeout=5)
        except requests.exceptions.RequestException as e:
            raise EndpointError(f"cannot reach {url}: {_reason(e)}") from None
        if resp.status_code != 200:
            raise EndpointError(f"{url} answered HTTP {resp.status_code}")

    def check(self) -> dict[str, Any]:
        """Fail fast with a clear message if the server is not usable; returns what it says of itself."""
        if self.kind == "openai":
            models = self._request("GET", "/v1/models", timeout=20)
            ids = [m.get("id") for m in models.get("data", [])] if isinstance(models, dict) else []
            if not ids:
                raise EndpointError(f"{self.base_url}/v1/models lists no model")
            self.model = self.model or ids[0]
            return {"model_path": self.model}
        info = self._request("GET", "/server_info", timeout=20)
        if not isinstance(info, dict):
            raise EndpointError(f"{self.base_url}/server_info did not return an object")
        return info

    def complete(self, prompt: str, max_new_tokens: int) -> Completion:
        """Greedy completion of ``prompt`` (the text is sent as is, no template added). The native
        endpoint streams, so the time to the first token is measured too."""
        if self.kind == "openai":
            body = {"model": self.model or "default", "prompt": prompt, "max_tokens": max_new_tokens, "temperature": 0.0}
            reply = self._request("POST", "/v1/completions", json=body)
            try:
                return Completion(str(reply["choices"][0]["text"]), None)
            except (KeyError, IndexError, TypeError):
                raise EndpointError(f"completion reply has no choices[0].text: {str(reply)[:200]}") from None
        body = {"text": prompt, "sampling_params": {"temperature": 0.0, "max_new_tokens": max_new_tokens}, "stream": True}
        ttft, reply = self._stream_generate(body)
        if not isinstance(reply.get("text"), str):
            raise EndpointError(f"/generate reply has no 'text': {str(reply)[:200]}")
        cached = (reply.get("meta_info") or {}).get("cached_tokens")
        return Completion(reply["text"], ttft, cached if isinstance(cached, int) else None)

    def generate_ids(self, input_ids: list[int], max_new_tokens: int) -> TokenCompletion:
        """``max_new_tokens`` tokens after ``input_ids`` (greedy, EOS ignored), streamed through
        ``/generate``, with the timings and the prompt tokens the server found cached."""
        body = {"input_ids": input_ids, "stream": True,
                "sampling_params": {"temperature": 0.0, "max_new_tokens": max_new_tokens, "ignore_eos": True}}
        started = time.perf_counter()
        ttft, reply = self._stream_generate(body, started)
        e2e = time.perf_counter() - started
        meta = reply.get("meta_info") or {}
        ids = reply.get("output_ids")
        if not isinstance(ids, list):
            raise EndpointError(f"/generate reply has no 'output_ids': {str(reply)[:200]}")
        return TokenCompletion(list(ids), ttft if ttft is not None else e2e, e2e,
                               int(meta.get("prompt_tokens", len(input_ids))), int(meta.get("cached_tokens") or 0))

    def _stream_generate(self, body: dict[str, Any], started: float | None = None) -> tuple[float | None, dict[str, Any]]:
        """POST a streamed ``/generate``: (seconds to the first event, the last event's reply)."""
        url = self.base_url + "/generate"
        t0 = time.perf_counter() if started is None else started
        resp = self._send("POST", "/generate", json=body, stream=True)
        ttft, reply, other = None, None, []
        try:
            for line in resp.iter_lines():
                line = line.decode("utf-8", errors="replace")
                if not line.startswith("data:"):
                    other.append(line)
                    continue
                payload = line[5:].strip()
                if payload == "[DONE]":
                    break
                ttft = time.perf_counter() - t0 if ttft is None else ttft
                reply = _json(payload, url)
                if isinstance(reply, dict) and "error" in reply:
                    raise EndpointError(f"{url} failed mid-stream: {str(reply['error'])[:300]}")
        except requests.exceptions.RequestException as e:
            raise EndpointError(f"{url} stream broke off: {e}") from None
        if ttft is None:  # no event came: a plain reply (or an error page from a proxy)
            reply = _json("\n".join(other), url)
        if not isinstance(reply, dict):
            raise EndpointError(f"/generate reply is not an object: {str(reply)[:200]}")
        return ttft, reply


def _json(text: str, url: str) -> Any:
    try:
        return json.loads(text)
    except (json.JSONDecodeError, ValueError):
        raise EndpointError(f"{url} sent a non-JSON reply: {text[:200]!r}") from None


def _reason(e: Exception) -> str:
    text = str(e)
    for marker in ("Connection refused", "Name or service not known", "No route to host", "timed out"):
        if marker in text:
            return marker.lower()
    return text[:200]
