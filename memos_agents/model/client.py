"""Talking to a model process (ours or any OpenAI-compatible server such as vLLM), and starting,
finding and stopping ours.

No torch here: a MemOS process that uses a local model only speaks HTTP to it. Chat completions
go through the openai SDK (the server is OpenAI-compatible); the MemOS extensions and vLLM's LoRA
endpoints are plain JSON over httpx.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil
from pydantic import BaseModel, Field, computed_field

from ..errors import MemOSError

DEFAULT_TIMEOUT = httpx.Timeout(600.0, connect=5.0)
API_KEY = "EMPTY"  # what the openai SDK sends when a server takes no key (vLLM by default)
API_KEY_ENV = "MEMOS_MODEL_API_KEY"  # the key of a server given by URL (MEMOS_MODEL_URL)
TOKEN_ENV = "MEMOS_MODEL_TOKEN"  # how a started process gets its token (never argv)
TOKEN_FILE = "token"  # beside server.json in the state dir, mode 0600
START_TIMEOUT = float(os.environ.get("MEMOS_MODEL_START_TIMEOUT", "900"))


class ModelError(MemOSError):
    """The model process refused a request or could not be reached."""

    def __init__(self, message: str, status: int | None = None, kind: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.kind = kind


class ActivationRefused(ModelError):
    """An activation (KV cache) cube does not fit: another model, or its sources changed."""


class ModelUnavailable(ModelError):
    """No model process answers at the URL, or one could not be started."""


class ModelUnauthorized(ModelError):
    """The model process refused the request's bearer token (none, or not its own)."""


def write_token(state_dir: Path) -> str:
    """A fresh random token for a model process of `state_dir`, written to
    `<state_dir>/token` with mode 0600 (replaced atomically, never readable by others)."""
    token = secrets.token_urlsafe(32)
    state_dir.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(OSError):  # the state dir (token, log) is its owner's alone
        os.chmod(state_dir, 0o700)
    target = state_dir / TOKEN_FILE
    tmp = state_dir / f".{TOKEN_FILE}.tmp{os.getpid()}-{time.monotonic_ns()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        os.fchmod(fd, 0o600)  # whatever the umask
        os.write(fd, token.encode())
    finally:
        os.close(fd)
    os.replace(tmp, target)
    return token


def read_token(state_dir: Path) -> str | None:
    """The token of the model process of `state_dir` (None if there is none)."""
    try:
        fd = os.open(state_dir / TOKEN_FILE, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:
        return None
    with os.fdopen(fd, "rb") as fh:
        token = fh.read(4096).decode(errors="replace").strip()
    return token or None


@dataclass
class Completion:
    """One chat completion, as the model process reported it."""

    text: str
    finish_reason: str | None
    usage: dict[str, Any] = field(default_factory=dict)
    timings: dict[str, Any] = field(default_factory=dict)
    ttft_s: float | None = None  # client side: request sent -> first content

    @property
    def cached_tokens(self) -> int:
        return int((self.usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0)


class ChatRequest(BaseModel):
    """A chat-completion request that carries chosen memories, for any OpenAI-compatible client
    of the model process: send `messages` (the memory block as the system message, then the
    turns) with `model` and `extra_body`, e.g. `ChatOpenAI(...).bind(**req.options)
    .invoke(req.messages)`. The activation's KV cache covers the start of the system message,
    so it is used only when `messages` are sent as they are."""

    model: str = Field(description="the adapter name of the parameter cube, or the base model")
    messages: list[dict[str, str]]
    extra_body: dict[str, Any] = Field(
        default_factory=dict, description='{"memos_activation": {...}}, or {} without one'
    )
    activation: str | None = None  # the activation cube whose KV cache is reused
    parameter: str | None = None  # the parameter cube whose adapter serves the request
    plaintext: list[str] = Field(default_factory=list)  # memories sent as text after the block
    planned: bool = False  # the scheduler chose the memories
    notes: list[str] = Field(default_factory=list)  # the plan's reasons and notes

    @computed_field  # type: ignore[prop-decorator]
    @property
    def used(self) -> list[str]:
        """Ids of the activation and parameter cubes the request carries."""
        return [c for c in (self.activation, self.parameter) if c is not None]

    @property
    def prefix(self) -> str:
        """The system message: the memory block the KV cache covers, and the text memories."""
        return self.messages[0]["content"]

    @property
    def options(self) -> dict[str, Any]:
        """`model` and `extra_body`, as a chat model's call options (`llm.bind(**options)`)."""
        return {"model": self.model, "extra_body": dict(self.extra_body)}

    def report(self) -> dict[str, Any]:
        """What the request used, for a reply's metadata."""
        report = {"activation", "parameter", "plaintext", "planned", "notes", "used"}
        return self.model_dump(include=report) | {"adapter": self.adapter}

    @property
    def adapter(self) -> str | None:
        """The adapter name, when a parameter cube serves the request."""
        return self.model if self.parameter is not None else None


def sdk_timeout(timeout: httpx.Timeout | float) -> Any:
    """`timeout` as the openai SDK takes it."""
    if not isinstance(timeout, httpx.Timeout):
        return timeout
    import openai

    return openai.Timeout(
        timeout.read, connect=timeout.connect, write=timeout.write, pool=timeout.pool
    )


def model_error(exc: Exception, url: str) -> ModelError:
    """Our error for one the openai SDK raised: no answer, a refusal, or an error mid-stream."""
    import openai

    if isinstance(exc, openai.APIConnectionError):
        return ModelUnavailable(f"no model process answers at {url}: {exc}")
    body = getattr(exc, "body", None)
    err = body if isinstance(body, dict) else {}
    message = err.get("message") or (body if isinstance(body, str) and body else None)
    kind = err.get("type")
    status = getattr(exc, "status_code", None)
    return _error_class(kind, status)(
        f"model process: {message or getattr(exc, 'message', exc)}", status=status, kind=kind
    )


def _error_class(kind: str | None, status: int | None) -> type[ModelError]:
    if status == 401:
        return ModelUnauthorized
    return ActivationRefused if kind == "activation_refused" else ModelError


def usage_dict(usage: Any) -> dict[str, Any]:
    """Token usage as the server sent it (an SDK model, or None)."""
    return usage.model_dump(exclude_unset=True) if usage is not None else {}


def absorb_chunk(chunk: Any, result: Completion) -> str:
    """Fold one streamed chunk (`ChatCompletionChunk`) into `result`; returns its text."""
    if chunk.usage is not None:
        result.usage = usage_dict(chunk.usage)
    memos = (chunk.model_extra or {}).get("memos")
    if memos:
        result.timings = memos.get("timings") or {}
    pieces = []
    for choice in chunk.choices:
        if choice.finish_reason:
            result.finish_reason = choice.finish_reason
        if choice.delta is not None and choice.delta.content:
            pieces.append(choice.delta.content)
    return "".join(pieces)


def _raise_for(resp: httpx.Response) -> None:
    if resp.status_code < 400:
        return
    try:
        err = resp.json().get("error") or {}
        message, kind = err.get("message") or resp.text, err.get("type")
    except ValueError:
        message, kind = resp.text, None
    cls = _error_class(kind, resp.status_code)
    raise cls(f"model process: {message}", status=resp.status_code, kind=kind)


class ModelClient:
    """HTTP client of one model process. `is_memos` tells whether it is ours (KV blobs, score,
    distil) or a plain OpenAI-compatible server. `api_key` is sent as
    `Authorization: Bearer <api_key>` on every request (our process's token, or a vLLM key)."""

    def __init__(
        self,
        url: str,
        *,
        api_key: str | None = None,
        timeout: httpx.Timeout | float = DEFAULT_TIMEOUT,
    ) -> None:
        self.url = url.rstrip("/")
        if self.url.endswith("/v1"):
            self.url = self.url[:-3]
        self.timeout = timeout
        self.api_key = api_key or None
        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        self.http = httpx.Client(base_url=self.url, timeout=timeout, headers=headers)
        self._sdk: Any = None
        self._info: dict[str, Any] | None = None

    def close(self) -> None:
        self.http.close()
        if self._sdk is not None:
            self._sdk.close()

    # discovery
    def health(self, timeout: float = 2.0) -> bool:
        """Whether the server answers `/v1/models` to this client (its key included)."""
        try:
            return self.http.get("/v1/models", timeout=timeout).status_code == 200
        except httpx.HTTPError:
            return False

    def ping(self, timeout: float = 10.0) -> None:
        """Raise unless the server answers `/v1/models` to this client: ModelUnavailable if
        nothing answers, ModelUnauthorized if it refuses the key, ModelError otherwise."""
        try:
            resp = self.http.get("/v1/models", timeout=timeout)
        except httpx.HTTPError as exc:
            raise ModelUnavailable(f"no model process answers at {self.url}: {exc}") from exc
        _raise_for(resp)

    def info(self, refresh: bool = False) -> dict[str, Any]:
        """Model identity (`/v1/memos/info`); for a server that is not ours, what `/v1/models`
        says, with `memos: False`."""
        if self._info is None or refresh:
            resp = self._request("GET", "/v1/memos/info")
            if resp.status_code == 404:
                models = self.models()
                base = next((m for m in models if not m.get("parent")), models[0] if models else {})
                self._info = {"memos": False, "model": base.get("id"), "revision": None}
            else:
                _raise_for(resp)
                self._info = resp.json()
        return self._info

    @property
    def is_memos(self) -> bool:
        return bool(self.info().get("memos"))

    @property
    def model_name(self) -> str:
        return str(self.info()["model"])

    def models(self) -> list[dict[str, Any]]:
        resp = self._request("GET", "/v1/models")
        _raise_for(resp)
        return list(resp.json().get("data") or [])

    def _request(self, method: str, path: str, **kw: Any) -> httpx.Response:
        try:
            return self.http.request(method, path, **kw)
        except httpx.HTTPError as exc:
            raise ModelUnavailable(f"no model process answers at {self.url}: {exc}") from exc

    # chat
    def chat(
        self,
        messages: list[dict[str, Any]],
        *,
        model: str | None = None,
        max_tokens: int = 256,
        temperature: float = 0.0,
        stop: list[str] | None = None,
        seed: int | None = None,
        activation: dict[str, Any] | None = None,
        response_format: dict[str, Any] | None = None,
        on_token: Callable[[str], None] | None = None,
    ) -> Completion:
        """A chat completion, always streamed so `ttft_s` is measured; `on_token` sees each
        piece of text as it arrives. `response_format` is OpenAI's (`{"type": "json_schema",
        "json_schema": {"name", "schema"}}` constrains the reply to the schema)."""
        parts: list[str] = []
        result = Completion(text="", finish_reason=None)
        for event in self.stream(
            messages,
            model=model,
            max_tokens=max_tokens,
            temperature=temperature,
            stop=stop,
            seed=seed,
            activation=activation,
            response_format=response_format,
            _result=result,
        ):
            parts.append(event)
            if on_token is not None:
                on_token(event)
        result.text = "".join(parts)
        return result

    def stream(
        self,
        messages: list[dict[str, Any]],
        *,
        model: str | None = None,
        max_tokens: int = 256,
        temperature: float = 0.0,
        stop: list[str] | None = None,
        seed: int | None = None,
        activation: dict[str, Any] | None = None,
        response_format: dict[str, Any] | None = None,
        _result: Completion | None = None,
    ) -> Iterator[str]:
        """The text of a streamed chat completion, piece by piece (through the openai SDK);
        `activation` goes in the request as `memos_activation`."""
        import openai

        options: dict[str, Any] = {}
        if stop:
            options["stop"] = stop
        if seed is not None:
            options["seed"] = seed
        if activation is not None:
            options["extra_body"] = {"memos_activation": activation}
        if response_format is not None:
            options["response_format"] = response_format
        result = _result if _result is not None else Completion(text="", finish_reason=None)
        name = model or self.model_name
        sent = time.perf_counter()
        try:
            chunks = self._openai().chat.completions.create(
                model=name,
                messages=messages,
                max_tokens=max_tokens,
                temperature=temperature,
                stream=True,
                stream_options={"include_usage": True},
                **options,
            )
            with chunks:
                for chunk in chunks:
                    piece = absorb_chunk(chunk, result)
                    if piece:
                        if result.ttft_s is None:
                            result.ttft_s = time.perf_counter() - sent
                        yield piece
        except openai.OpenAIError as exc:
            raise model_error(exc, self.url) from exc

    def _openai(self) -> Any:
        """The openai SDK's client of this server, made on first use (the SDK is imported only
        by code that chats)."""
        if self._sdk is None:
            import openai

            self._sdk = openai.OpenAI(
                base_url=f"{self.url}/v1",
                api_key=self.api_key or API_KEY,
                timeout=sdk_timeout(self.timeout),
                max_retries=0,
            )
        return self._sdk

    # LoRA (vLLM's runtime endpoints)
    def load_adapter(self, name: str, path: str | Path) -> bool:
        """Load an adapter under `name`; False if one of that name was already loaded."""
        if any(m.get("id") == name for m in self.models()):
            return False
        resp = self._request(
            "POST", "/v1/load_lora_adapter", json={"lora_name": name, "lora_path": str(path)}
        )
        if resp.status_code == 400 and "already" in resp.text:
            return False
        _raise_for(resp)
        return True

    def unload_adapter(self, name: str) -> bool:
        resp = self._request("POST", "/v1/unload_lora_adapter", json={"lora_name": name})
        if resp.status_code == 404:
            return False
        _raise_for(resp)
        return True

    def adapters(self) -> list[str]:
        return [m["id"] for m in self.models() if m.get("parent")]

    # MemOS extensions
    def _need_memos(self, what: str) -> None:
        if not self.is_memos:
            raise ModelError(
                f"{what} needs a memos-agents model process; {self.url} is a plain "
                "OpenAI-compatible server (with vLLM, enable prefix caching: memories are then "
                "sent as text and their KV cache is reused by the server)"
            )

    def build_activation(
        self,
        messages: list[dict[str, Any]],
        *,
        fingerprint: str,
        path: str | Path,
        adapter: str | None = None,
        meta: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        self._need_memos("building activation memory")
        body = {
            "messages": messages,
            "fingerprint": fingerprint,
            "path": str(path),
            "model": adapter or self.model_name,
            "meta": meta or {},
        }
        resp = self._request("POST", "/v1/memos/activation/build", json=body)
        _raise_for(resp)
        return resp.json()

    def evict(self, fingerprint: str | None = None) -> int:
        self._need_memos("evicting activation memory")
        resp = self._request(
            "POST", "/v1/memos/activation/evict", json={"fingerprint": fingerprint}
        )
        _raise_for(resp)
        return int(resp.json()["evicted"])

    def score(
        self, items: list[dict[str, Any]], adapter: str | None = None
    ) -> list[dict[str, Any]]:
        """Mean negative log-likelihood (and perplexity) of each item under the base model or
        an adapter: {"text": ...} or {"messages": [...], "completion": ...}."""
        self._need_memos("scoring")
        resp = self._request(
            "POST", "/v1/memos/score", json={"items": items, "model": adapter or self.model_name}
        )
        _raise_for(resp)
        return list(resp.json()["scores"])

    def distil(
        self,
        *,
        name: str,
        path: str | Path,
        examples: list[dict[str, Any]],
        progress: Callable[[dict[str, Any]], None] | None = None,
        **options: Any,
    ) -> dict[str, Any]:
        """Train a LoRA adapter on `examples`; it is saved to `path` and stays loaded as `name`.
        `progress` gets {"step", "steps", "loss"} after every step."""
        self._need_memos("distilling parameter memory")
        body = {"name": name, "path": str(path), "examples": examples, **options}
        try:
            with self.http.stream("POST", "/v1/memos/distil", json=body) as resp:
                if resp.status_code >= 400:
                    resp.read()
                    _raise_for(resp)
                for line in resp.iter_lines():
                    if not line.strip():
                        continue
                    event = json.loads(line)
                    if "progress" in event:
                        if progress is not None:
                            progress(event["progress"])
                    elif "error" in event:
                        raise ModelError(
                            f"model process: {event['error']['message']}",
                            status=event["error"].get("code"),
                        )
                    elif "result" in event:
                        return dict(event["result"])
        except httpx.HTTPError as exc:
            raise ModelUnavailable(f"no model process answers at {self.url}: {exc}") from exc
        raise ModelError("model process ended the distillation without a result")

    def shutdown(self) -> bool:
        try:
            resp = self.http.post("/v1/memos/shutdown", timeout=5.0)
            return resp.status_code == 200
        except httpx.HTTPError:
            return False


# the process


class ModelProcess:
    """A model process this program started (or found through its state file)."""

    def __init__(
        self,
        url: str,
        pid: int,
        popen: subprocess.Popen[bytes] | None = None,
        state_file: Path | None = None,
        log_file: Path | None = None,
        token: str | None = None,
    ) -> None:
        self.url = url
        self.token = token
        self.pid = pid
        self.popen = popen
        self.state_file = state_file
        self.log_file = log_file

    def alive(self) -> bool:
        if self.popen is not None:
            return self.popen.poll() is None
        return psutil.pid_exists(self.pid)

    @classmethod
    def start(
        cls,
        *,
        state_dir: Path,
        cache_dir: Path,
        model: str | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        threads: int | None = None,
        kv_budget_mb: int = 1024,
        dtype: str = "float32",
        device: str = "cpu",
        timeout: float = START_TIMEOUT,
        attach: bool = True,
        blob_root: Path | None = None,
    ) -> ModelProcess:
        """Start `python -m memos_agents.model.server` and wait until it answers. With `attach`
        the child stops by itself when this process dies. It gets a fresh token (in its
        environment, and in `<state_dir>/token`, mode 0600) and `blob_root`, the only folder
        its requests may name paths in (`<data dir>/blobs`; None: no path is accepted)."""
        state_dir.mkdir(parents=True, exist_ok=True)
        token = write_token(state_dir)
        ready = state_dir / f"ready-{os.getpid()}-{time.monotonic_ns()}.json"
        log_file = state_dir / "server.log"
        args = [
            sys.executable,
            "-m",
            "memos_agents.model.server",
            "--cache-dir",
            str(cache_dir),
            "--host",
            host,
            "--port",
            str(port),
            "--ready-file",
            str(ready),
            "--state-file",
            str(state_dir / "server.json"),
            "--kv-budget-mb",
            str(kv_budget_mb),
            "--dtype",
            dtype,
            "--device",
            device,
        ]
        if model:
            args += ["--model", model]
        if threads:
            args += ["--threads", str(threads)]
        if attach:
            args += ["--parent-pid", str(os.getpid())]
        if blob_root is not None:
            args += ["--blob-root", str(blob_root)]
        env = {
            **os.environ,
            "OMP_WAIT_POLICY": "PASSIVE",
            "TOKENIZERS_PARALLELISM": "false",
            TOKEN_ENV: token,
        }
        if model is None:  # the packaged model never needs the hub
            env.setdefault("HF_HUB_OFFLINE", "1")
        with open(log_file, "ab") as out:
            popen = subprocess.Popen(
                args,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=out,
                env=env,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while not ready.exists():
            if popen.poll() is not None:
                tail = log_file.read_text(errors="replace")[-2000:]
                raise ModelUnavailable(
                    f"model process exited with {popen.returncode} while starting:\n{tail}"
                )
            if time.monotonic() > deadline:
                popen.kill()
                raise ModelUnavailable(f"model process did not start within {timeout:.0f} s")
            time.sleep(0.1)
        info = json.loads(ready.read_text())
        ready.unlink(missing_ok=True)
        return cls(info["url"], popen.pid, popen, state_dir / "server.json", log_file, token)

    @classmethod
    def find(cls, state_dir: Path) -> ModelProcess | None:
        """The model process recorded in `state_dir`, if it is still running and answers to
        the token kept there."""
        try:
            state = json.loads((state_dir / "server.json").read_text())
        except (OSError, ValueError):
            return None
        if not psutil.pid_exists(int(state["pid"])):
            return None
        token = read_token(state_dir)
        client = ModelClient(state["url"], api_key=token, timeout=5.0)
        try:
            ok = client.health()
        finally:
            client.close()
        if not ok:
            return None
        return cls(
            state["url"], int(state["pid"]), state_file=state_dir / "server.json", token=token
        )

    def client(self, timeout: httpx.Timeout | float = DEFAULT_TIMEOUT) -> ModelClient:
        """A client of this process, with its token."""
        return ModelClient(self.url, api_key=self.token, timeout=timeout)

    def stop(self, timeout: float = 15.0) -> bool:
        """Stop cleanly (shutdown request, then SIGTERM, then SIGKILL). True if it was running."""
        if not self.alive():
            self._forget()
            return False
        client = self.client(timeout=5.0)
        try:
            client.shutdown()
        finally:
            client.close()
        if not self._wait(timeout / 2):
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGTERM)
            if not self._wait(timeout / 2):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self.pid, signal.SIGKILL)
                self._wait(5)
        self._forget()
        return True

    def _wait(self, seconds: float) -> bool:
        if self.popen is not None:
            try:
                self.popen.wait(seconds)
                return True
            except subprocess.TimeoutExpired:
                return False
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if not psutil.pid_exists(self.pid):
                return True
            time.sleep(0.1)
        return not psutil.pid_exists(self.pid)

    def _forget(self) -> None:
        if self.state_file is None:
            return
        state_dir = self.state_file.parent
        if self.token is not None and read_token(state_dir) == self.token:
            (state_dir / TOKEN_FILE).unlink(missing_ok=True)  # a token outlives no process
        try:
            state = json.loads(self.state_file.read_text())
        except (OSError, ValueError):
            return
        if int(state.get("pid", -1)) == self.pid:
            self.state_file.unlink(missing_ok=True)
