"""A small, strict client for SGLang's native ``/generate`` and the OpenAI completions API.

Every failure becomes an :class:`EndpointError` with one clear sentence (unreachable, timed out,
HTTP error with the body's first line, non-JSON reply, reply without the expected field);
every request has a bounded timeout, so a benchmark never hangs on a dead server.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Literal

import requests

Kind = Literal["generate", "openai"]


class EndpointError(RuntimeError):
    """The server could not be used; the message says why."""


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

    def _request(self, method: str, path: str, timeout: float | None = None, **kw: Any) -> Any:
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
        try:
            return resp.json()
        except (json.JSONDecodeError, ValueError):
            raise EndpointError(f"{url} sent a non-JSON reply: {resp.text[:200]!r}") from None

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

    def complete(self, prompt: str, max_new_tokens: int) -> str:
        """Greedy completion of ``prompt`` (the text is sent as is, no template added)."""
        if self.kind == "openai":
            body = {"model": self.model or "default", "prompt": prompt, "max_tokens": max_new_tokens, "temperature": 0.0}
            reply = self._request("POST", "/v1/completions", json=body)
            try:
                return str(reply["choices"][0]["text"])
            except (KeyError, IndexError, TypeError):
                raise EndpointError(f"completion reply has no choices[0].text: {str(reply)[:200]}") from None
        body = {"text": prompt, "sampling_params": {"temperature": 0.0, "max_new_tokens": max_new_tokens}}
        reply = self._request("POST", "/generate", json=body)
        if not isinstance(reply, dict) or not isinstance(reply.get("text"), str):
            raise EndpointError(f"/generate reply has no 'text': {str(reply)[:200]}")
        return reply["text"]


def _reason(e: Exception) -> str:
    text = str(e)
    for marker in ("Connection refused", "Name or service not known", "No route to host", "timed out"):
        if marker in text:
            return marker.lower()
    return text[:200]
