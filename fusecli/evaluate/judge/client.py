"""The judge endpoint: any OpenAI-compatible chat completions server (vLLM, `transformers serve`, OpenAI),
through the `openai` package (the `judge` extra).

The key is read from the environment variable `evaluate.judge.api_key_env` names, at the call, and goes
only into the request's Authorization header: it is never logged, written, or put into an error message
(a server's error text is scrubbed of it too).
"""

from __future__ import annotations

import json
import os
from typing import Any

from fusecli.errors import FusecliError
from fusecli.evaluate.params import JudgeParams

NO_KEY = "EMPTY"  # what local servers without a key accept (vLLM's convention); the header must hold something


def api_key(env: str | None) -> str:
    """The key from the environment; a variable named but unset is an error (null: no key)."""
    if env is None:
        return NO_KEY
    key = os.environ.get(env)
    if not key:
        raise FusecliError(
            f"evaluate.judge.api_key_env names {env}, which is not set: export {env}=<key>, "
            "or set api_key_env: null for a server without a key"
        )
    return key


def reason(exc: Any) -> str:
    """What the endpoint said: the body of its error response (the openai client, 3.63 at least, keeps it out
    of the exception's message, "Error code: 400"), else that message. `{"error": {"message": ...}}` (OpenAI,
    vLLM; the client unwraps "error") and `{"detail": ...}` (FastAPI: `transformers serve`) give their text;
    other bodies are shown as they are."""
    body = getattr(exc, "body", None)
    if isinstance(body, dict):
        body = body.get("message") or body.get("detail") or json.dumps(body)
    if body:
        return body if isinstance(body, str) else json.dumps(body)
    return str(getattr(exc, "message", exc))


class Judge:
    """`reply(messages)`: the judge's text for one request; endpoint failures are one-line FusecliErrors."""

    def __init__(self, params: JudgeParams) -> None:
        try:
            import openai
        except ImportError:
            raise FusecliError("evaluate.backend = judge needs the openai package: pip install -e '.[judge]'") from None
        self.openai, self.params = openai, params
        self._key = api_key(params.api_key_env)
        self.client = openai.OpenAI(base_url=params.base_url, api_key=self._key, timeout=params.timeout,
                                    max_retries=params.retries)

    def reply(self, messages: list[dict[str, str]]) -> str:
        p = self.params
        try:
            out = self.client.chat.completions.create(model=p.model, messages=messages,  # type: ignore[arg-type]
                                                      temperature=p.temperature, max_tokens=p.max_tokens)
        except self.openai.OpenAIError as exc:
            raise FusecliError(self._explain(exc)) from None
        if not getattr(out, "choices", None):
            raise FusecliError(f"the judge at {p.base_url} answered without a choice: is it a chat endpoint?")
        return out.choices[0].message.content or ""

    def _explain(self, exc: Any) -> str:
        p, openai = self.params, self.openai
        where = f"the judge at {p.base_url}"
        if isinstance(exc, openai.APITimeoutError):
            return f"{where} did not answer within {p.timeout:g} s ({p.retries} retries): raise evaluate.judge.timeout"
        if isinstance(exc, openai.APIConnectionError):
            return f"cannot reach {where}: start the server, or fix evaluate.judge.base_url (it ends in /v1)"
        status = getattr(exc, "status_code", None)
        if isinstance(exc, openai.AuthenticationError | openai.PermissionDeniedError):
            fix = f"check the key in ${p.api_key_env}" if p.api_key_env else "set evaluate.judge.api_key_env"
            return f"{where} refused the key (HTTP {status}): {fix}"
        text = " ".join(reason(exc).split())[:500]
        if self._key != NO_KEY:
            text = text.replace(self._key, "***")
        if isinstance(exc, openai.NotFoundError):
            return (f"{where} has no model {p.model!r} or no chat endpoint (HTTP 404: {text}): "
                    "fix evaluate.judge.model or evaluate.judge.base_url")
        return f"{where} refused the request for model {p.model!r} (HTTP {status}: {text}): check evaluate.judge"
