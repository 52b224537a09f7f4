"""The generate request body: read within a size limit, parsed as strict JSON, checked field by field.

FastAPI's own body parsing let through NaN/Infinity (which the error handler then could not write),
lone surrogates (UnicodeEncodeError later), unbounded bodies, and answered deep JSON or invalid UTF-8
with a bare {"detail"}. Here every such case is a BadInput: 400, or 413 for sizes.
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr, ValidationError

from serving.config import LimitSettings
from serving.errors import BadInput

SHAPE = 'send JSON like {"prompt": "...", "max_new_tokens": 16, "image": "<base64>"}'
FIELDS = ("prompt", "image", "max_new_tokens")
MAX_INT_DIGITS = 20
MAX_DEPTH = 32


class GenerateBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    prompt: StrictStr = Field(min_length=1)
    image: StrictStr | None = Field(default=None, description="base64-encoded image bytes")
    # Strict: true, "16", 16.0 and 1e2 are refused rather than coerced.
    max_new_tokens: StrictInt = Field(default=16, ge=1)


def _no_constants(name: str) -> Any:
    raise BadInput("body", name, "contains a non-standard JSON number", f"send finite numbers; {SHAPE}")


def _bounded_int(text: str) -> int:
    if len(text.lstrip("-")) > MAX_INT_DIGITS:
        raise BadInput(
            "body", text, f"holds an integer of {len(text)} digits", f"send integers of at most {MAX_INT_DIGITS} digits"
        )
    return int(text)


def _check_strings(value: Any, where: str, depth: int = 0) -> None:
    """A lone surrogate (\\ud800) is valid JSON but cannot be encoded later: refuse it here. Our
    body is flat, so nesting past MAX_DEPTH is refused too (before it can exhaust the stack)."""
    if depth > MAX_DEPTH:
        raise BadInput("body", "", f"is nested deeper than {MAX_DEPTH} levels", SHAPE)
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise BadInput(where, value, "holds a lone surrogate", "send valid Unicode text") from None
    elif isinstance(value, dict):
        for k, v in value.items():
            _check_strings(k, "body", depth + 1)
            _check_strings(v, k if k in FIELDS else "body", depth + 1)
    elif isinstance(value, list):
        for v in value:
            _check_strings(v, where, depth + 1)


def parse_json(raw: bytes) -> Any:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise BadInput("body", raw[max(0, e.start - 8) : e.start + 8].hex(), "is not UTF-8", SHAPE) from None
    try:
        data = json.loads(text, parse_constant=_no_constants, parse_int=_bounded_int)
    except RecursionError:
        raise BadInput("body", text, "is nested too deeply", SHAPE) from None
    except json.JSONDecodeError as e:
        raise BadInput("body", text, f"is not valid JSON ({e.msg} at position {e.pos})", SHAPE) from None
    except ValueError as e:  # e.g. a number that cannot be read
        raise BadInput("body", text, f"is not valid JSON ({e})", SHAPE) from None
    _check_strings(data, "body")
    return data


def validate_body(data: Any, limits: LimitSettings, max_new_tokens_limit: int) -> GenerateBody:
    if not isinstance(data, dict):
        raise BadInput("body", data, "is not a JSON object", SHAPE)
    try:
        body = GenerateBody.model_validate(data)
    except ValidationError as e:
        err = e.errors()[0]
        loc = [str(p) for p in err.get("loc", ())]
        # Only our own field names become `field` (and a metric tag); an unknown key is "body".
        field = loc[0] if loc and loc[0] in FIELDS else "body"
        value = err.get("input") if field != "body" else (loc[0] if loc else data)
        raise BadInput(field, value, f"is not valid: {err.get('msg')}", SHAPE) from None
    if body.max_new_tokens > max_new_tokens_limit:
        raise BadInput(
            "max_new_tokens",
            body.max_new_tokens,
            "is above this server's limit",
            f"send an integer in [1, {max_new_tokens_limit}]",
        )
    if len(body.prompt) > limits.max_prompt_chars:
        raise BadInput(
            "prompt",
            body.prompt,
            f"holds {len(body.prompt)} characters",
            f"send at most {limits.max_prompt_chars}",
            status=413,
        )
    if body.image is not None:
        # Decoded size from the encoded length first: a huge image is refused before decoding it.
        if len(body.image) * 3 // 4 > limits.max_image_bytes:
            raise BadInput(
                "image",
                body.image,
                f"holds about {len(body.image) * 3 // 4} bytes",
                f"send at most {limits.max_image_bytes} bytes (before base64)",
                status=413,
            )
        try:
            base64.b64decode(body.image, validate=True)
        except (binascii.Error, ValueError):
            raise BadInput("image", body.image, "is not valid base64", "send the image bytes base64-encoded") from None
    return body


async def read_body(request: Any, limit: int) -> bytes:
    """The raw body, refused with 413 as soon as it passes `limit` bytes (never held whole)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isascii() and declared.isdigit() and int(declared) > limit:
        raise BadInput("body", f"{declared} bytes", "is too large", f"send at most {limit} bytes", status=413)
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise BadInput(
                "body", f"more than {limit} bytes", "is too large", f"send at most {limit} bytes", status=413
            )
        chunks.append(chunk)
    return b"".join(chunks)


async def generate_body(request: Any, limits: LimitSettings, max_new_tokens_limit: int) -> GenerateBody:
    return validate_body(parse_json(await read_body(request, limits.max_body_bytes)), limits, max_new_tokens_limit)
