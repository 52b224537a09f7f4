"""OpenAI-compatible request and response shapes: chat completions, completions, models.

Parsing turns an OpenAI body into what /v1/generate takes (prompt, one optional image, new
tokens) plus the streaming flags and an optional body budget; anything this server would have to
ignore (sampling, several choices, tools, logprobs) is a 400 that names it, never a silent no-op.
Responses carry the usual fields, `usage`, and a documented extra object `budget` with the knobs,
table version and feasibility (the same values as the X-Knob-* response headers). A stream's finish
chunk also carries `timings`, the replica's side of the request (what Server-Timing tells of a
whole answer, which a stream's headers, sent at its first token, cannot).
"""

from __future__ import annotations

import json
import math
import time
import uuid
from dataclasses import dataclass
from typing import Any

from serving.config import LimitSettings
from serving.errors import BadInput
from serving.ingress.body import validate_body

MODEL_ID = "moe-budget"  # the one model /v1/models lists; requests must name it
OPENAI_PATHS = ("/v1/chat/completions", "/v1/completions", "/v1/models")
CHAT_SHAPE = 'send {"model": "moe-budget", "messages": [{"role": "user", "content": "..."}]}'
COMPLETION_SHAPE = 'send {"model": "moe-budget", "prompt": "..."}'
ROLES = ("system", "user", "assistant")
# Accepted only at the value greedy decoding already has; any other value would be ignored.
GREEDY = {"temperature": (0, 0.0), "top_p": (1, 1.0), "n": (1,), "presence_penalty": (0, 0.0),
          "frequency_penalty": (0, 0.0)}
COMMON = {"model", "max_tokens", "stream", "stream_options", "latency_budget_ms", "user", *GREEDY}
CHAT_FIELDS = COMMON | {"messages", "max_completion_tokens"}
COMPLETION_FIELDS = COMMON | {"prompt"}


@dataclass(frozen=True)
class OpenAIRequest:
    kind: str  # "chat" or "completion"
    prompt: str
    image_b64: str | None
    max_new_tokens: int
    stream: bool
    include_usage: bool
    budget_ms: Any  # the body's latency_budget_ms as sent, or None


def is_openai_path(path: str) -> bool:
    # The app may sit under a route prefix (e.g. /moe/v1/chat/completions).
    return path.endswith(OPENAI_PATHS)


def _check_fields(data: dict[str, Any], kind: str) -> None:
    allowed = CHAT_FIELDS if kind == "chat" else COMPLETION_FIELDS
    shape = CHAT_SHAPE if kind == "chat" else COMPLETION_SHAPE
    unknown = sorted(str(k)[:40] for k in data if k not in allowed)
    if unknown:
        raise BadInput("body", ", ".join(unknown[:5]), "names parameters this server does not support",
                       f"use only {', '.join(sorted(allowed))}")
    if data.get("model") != MODEL_ID:
        raise BadInput("model", data.get("model"), "is not a model served here", f"send model: {MODEL_ID!r}",
                       status=404)
    for name, values in GREEDY.items():
        if name in data and (isinstance(data[name], bool) or data[name] not in values):
            raise BadInput(name, data[name], "is not supported: this server decodes greedily, one choice",
                           f"leave {name} out or send {values[0]}")
    if "stream" in data and not isinstance(data["stream"], bool):
        raise BadInput("stream", data["stream"], "is not a boolean", "send true or false")
    opts = data.get("stream_options")
    if opts is not None and (not isinstance(opts, dict) or set(opts) - {"include_usage"}
                             or not isinstance(opts.get("include_usage", False), bool)):
        raise BadInput("stream_options", opts, "is not valid", 'send {"include_usage": true|false}')
    if not isinstance(data.get("model"), str):
        raise BadInput("model", data.get("model"), "is not a string", shape)


def _max_tokens(data: dict[str, Any], kind: str) -> int:
    names = [n for n in ("max_tokens", "max_completion_tokens") if data.get(n) is not None]
    if len(names) > 1:
        raise BadInput("max_tokens", data["max_tokens"], "is given with max_completion_tokens", "send one of them")
    if not names:
        return 16
    value = data[names[0]]
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise BadInput(names[0], value, "is not a positive integer", "send an integer >= 1, e.g. 64")
    return value


def _image(url: Any) -> str:
    if not isinstance(url, str) or not url.startswith("data:") or ";base64," not in url[:100]:
        raise BadInput("messages", url, "is not a base64 data URL",
                       "send image_url.url as data:image/png;base64,<bytes> (no URLs are fetched)")
    return url.split(";base64,", 1)[1]


def _chat_prompt(messages: Any) -> tuple[str, str | None]:
    """Text of every message, 'role: text' per line, ending with 'assistant:'; the one image."""
    if not isinstance(messages, list) or not messages:
        raise BadInput("messages", messages, "is not a non-empty list", CHAT_SHAPE)
    lines, images = [], []
    for m in messages:
        if not isinstance(m, dict) or m.get("role") not in ROLES or set(m) - {"role", "content", "name"}:
            raise BadInput("messages", m, "holds a message this server cannot read",
                           f"send {{'role': one of {', '.join(ROLES)}, 'content': text or parts}}")
        content = m.get("content")
        if isinstance(content, str):
            texts = [content]
        elif isinstance(content, list):
            texts = []
            for part in content:
                kind = part.get("type") if isinstance(part, dict) else None
                if kind == "text" and isinstance(part.get("text"), str):
                    texts.append(part["text"])
                elif kind == "image_url" and isinstance(part.get("image_url"), dict):
                    images.append(_image(part["image_url"].get("url")))
                else:
                    raise BadInput("messages", part, "holds a content part this server cannot read",
                                   "send parts of type text or image_url (base64 data URL)")
        else:
            raise BadInput("messages", content, "holds content that is neither text nor parts", CHAT_SHAPE)
        lines.append(f"{m['role']}: {' '.join(texts)}")
    if len(images) > 1:
        raise BadInput("messages", f"{len(images)} images", "holds more than one image", "send at most one image")
    return "\n".join(lines) + "\nassistant:", (images[0] if images else None)


def parse(data: Any, kind: str, limits: LimitSettings, max_new_tokens_limit: int) -> OpenAIRequest:
    """A parsed JSON body (serving.ingress.body.parse_json) -> OpenAIRequest, or BadInput."""
    if not isinstance(data, dict):
        raise BadInput("body", data, "is not a JSON object", CHAT_SHAPE if kind == "chat" else COMPLETION_SHAPE)
    _check_fields(data, kind)
    if kind == "chat":
        prompt, image = _chat_prompt(data.get("messages"))
    else:
        raw = data.get("prompt")
        if isinstance(raw, list) and len(raw) == 1:
            raw = raw[0]
        if not isinstance(raw, str) or not raw:
            raise BadInput("prompt", raw, "is not a non-empty string", COMPLETION_SHAPE)
        prompt, image = raw, None
    max_new = _max_tokens(data, kind)
    try:  # the size limits and checks of /v1/generate, named by this API's fields
        body = validate_body({"prompt": prompt, "image": image, "max_new_tokens": max_new}, limits,
                             max_new_tokens_limit)
    except BadInput as e:
        field = {"prompt": "messages" if kind == "chat" else "prompt", "image": "messages",
                 "max_new_tokens": "max_tokens"}.get(e.field, "body")
        raise BadInput(field, e.value, e.problem, e.accepted, status=e.status) from None
    opts = data.get("stream_options") or {}
    return OpenAIRequest(kind, body.prompt, body.image, body.max_new_tokens, bool(data.get("stream", False)),
                         bool(opts.get("include_usage", False)), data.get("latency_budget_ms"))


# ---- errors ----------------------------------------------------------------------------------------

def error_body(message: str, type_: str, param: str | None, code: str | None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def bad_input_body(e: BadInput) -> dict[str, Any]:
    code = {404: "model_not_found", 413: "request_too_large"}.get(e.status, "invalid_value")
    return error_body(str(e), "invalid_request_error", None if e.field == "body" else e.field, code)


# ---- responses -----------------------------------------------------------------------------------

def finish_reason(reason: str) -> str:
    """The OpenAI finish_reason for ours: a cancelled stream had no client left to tell."""
    return reason if reason in ("stop", "length") else "stop"


def usage(output: dict[str, Any]) -> dict[str, int]:
    prompt, completion = int(output.get("prompt_tokens") or 0), int(output.get("output_tokens") or 0)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def budget_extra(answer: dict[str, Any]) -> dict[str, Any]:
    """The documented extra object: what the budget bought, as in the X-Knob-* headers."""
    keys = ("knobs", "table_version", "feasible", "fallback", "expected_accuracy", "expected_latency_ms",
            "budget_ms", "remaining_budget_ms", "budget_policy", "budget_covers", "knobs_bound_at")
    return {k: answer.get(k) for k in keys}


# The replica's own times (ms) of a streamed request, from its result: the wait before its backend
# call, arrival to first token, arrival to the end, and the model's own first token and decode.
_TIMING_KEYS = ("queue_wait_ms", "replica_first_token_ms", "replica_ms", "first_token_ms")


def timings_extra(output: dict[str, Any], router_first_token_ms: float | None = None) -> dict[str, float | None]:
    """The documented extra object `timings` of a stream's finish chunk: the replica's figures
    (`output`, the model result's dict) and the router's time to the first chunk handed to the
    server (`router_first_token_ms`)."""
    out: dict[str, float | None] = {k: _ms(output.get(k)) for k in _TIMING_KEYS}
    model = output.get("timings_ms")
    out["decode_ms"] = _ms(model.get("decode")) if isinstance(model, dict) else None
    out["router_first_token_ms"] = _ms(router_first_token_ms)
    return out


def _ms(x: Any) -> float | None:
    ok = isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)
    return round(float(x), 3) if ok else None  # never NaN or Infinity into JSON


def new_id(kind: str) -> str:
    return f"{'chatcmpl' if kind == 'chat' else 'cmpl'}-{uuid.uuid4().hex[:24]}"


def completion(req: OpenAIRequest, output: dict[str, Any], answer: dict[str, Any], rid: str) -> dict[str, Any]:
    choice: dict[str, Any] = {"index": 0, "finish_reason": finish_reason(str(output.get("finish_reason"))),
                              "logprobs": None}
    if req.kind == "chat":
        choice["message"] = {"role": "assistant", "content": output.get("text", "")}
    else:
        choice["text"] = output.get("text", "")
    return {
        "id": rid,
        "object": "chat.completion" if req.kind == "chat" else "text_completion",
        "created": int(time.time()),
        "model": MODEL_ID,
        "choices": [choice],
        "usage": usage(output),
        "budget": budget_extra(answer),
    }


def chunk(req: OpenAIRequest, rid: str, delta: str, finish: str | None, answer: dict[str, Any] | None,
          first: bool = False, timings: dict[str, float | None] | None = None) -> str:
    """One server-sent event in the OpenAI chunk format (`timings`: the finish chunk's extra)."""
    if req.kind == "chat":
        d: dict[str, Any] = {"content": delta}
        if first:
            d["role"] = "assistant"
        choice: dict[str, Any] = {"index": 0, "delta": d if (delta or first) else {}, "finish_reason": finish,
                                  "logprobs": None}
        obj = "chat.completion.chunk"
    else:
        choice, obj = {"index": 0, "text": delta, "finish_reason": finish, "logprobs": None}, "text_completion"
    body: dict[str, Any] = {"id": rid, "object": obj, "created": int(time.time()), "model": MODEL_ID,
                            "choices": [choice]}
    if answer is not None:
        body["budget"] = budget_extra(answer)
    if timings is not None:
        body["timings"] = timings
    return f"data: {json.dumps(body)}\n\n"


def usage_chunk(req: OpenAIRequest, rid: str, output: dict[str, Any]) -> str:
    obj = "chat.completion.chunk" if req.kind == "chat" else "text_completion"
    body = {"id": rid, "object": obj, "created": int(time.time()), "model": MODEL_ID, "choices": [],
            "usage": usage(output)}
    return f"data: {json.dumps(body)}\n\n"


def models() -> dict[str, Any]:
    return {"object": "list", "data": [{"id": MODEL_ID, "object": "model", "created": 0, "owned_by": "moe-budget"}]}
