"""Channel webhooks: /v1/webhooks/{channel}, authenticated by each platform's own signature.

No API key here: the platform signs, the channel's connector verifies over the raw bytes
before anything is parsed, and the delivery goes into the inbox (engine/channels/inbound)
in one script that also remembers its id. The answer comes at once, well inside every
platform's timeout; the order is applied from the inbox by the channel worker.

- 200 {"accepted": true}            new delivery, queued
- 200 {"accepted": false, ...}      a duplicate (same platform delivery id): nothing queued
- 200 challenge body                eBay's endpoint validation (GET ?challenge_code=...)
- 401 problem+json                  bad or missing signature: nothing queued
- 400 problem+json                  signed but unreadable
- 404 problem+json                  no such connected channel
- 413 problem+json                  body over max_body_bytes
- 503 problem+json                  the platform's key service (eBay) could not be reached:
                                    the platform delivers again later
"""

from __future__ import annotations

import logging
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from engine.channels.base import BadDelivery, Challenge, Connector, SignatureError

from . import problems
from .endpoint import read_body
from .problems import ApiError, problem

log = logging.getLogger("stockguard.webhooks")


def _refuse(request: Request, status: int, kind: str, title: str, detail: str) -> Response:
    return problem(request, status, kind, title, detail, {})


async def _verify(connector: Connector, request: Request, body: bytes) -> Any:
    prepare = getattr(connector, "prepare", None)
    if prepare is not None:  # eBay: fetch the signing key the header names, once per hour
        await prepare(request.headers)
    return connector.verify(request.headers, body, str(request.url))


async def receive(request: Request) -> Response:
    channel = request.path_params["channel"]
    connector = request.app.state.connectors.get(channel)
    if connector is None:
        return _refuse(request, 404, "not-found", "No such channel",
                       f"no connected channel {channel!r} takes webhooks")  # fmt: skip
    try:
        body = await read_body(request, request.app.state.max_body_bytes)
    except ApiError as error:  # 413
        return problems.render(request, error)
    try:
        delivery = await _verify(connector, request, body)
    except Challenge as challenge:
        return JSONResponse(challenge.body)
    except SignatureError as error:
        request.app.state.metrics.webhook(channel, "bad-signature")
        return _refuse(request, 401, "bad-signature", "Bad signature", str(error))
    except BadDelivery as error:
        request.app.state.metrics.webhook(channel, "unreadable")
        return _refuse(request, 400, "bad-delivery", "Unreadable delivery", str(error))
    except Exception as error:  # the platform's key service: it will deliver again
        log.warning("webhook %s: cannot verify now: %s", channel, error)
        return _refuse(request, 503, "unavailable", "Try again", "cannot verify the delivery now")
    accepted = await request.app.state.inbox.accept(channel, delivery)
    request.app.state.metrics.webhook(channel, "accepted" if accepted else "duplicate")
    return JSONResponse({"accepted": accepted, "delivery_id": delivery.delivery_id})
