"""Liveness and readiness probes (never cached)."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Request, Response
from pydantic import BaseModel

from api.deps import SettingsDep, StoreDep
from api.errors import error_response, outage_warning
from api.http_metrics import MeteredRoute
from api.responses import PROBE_CACHE_CONTROL, json_response
from api.schemas.envelope import Envelope, ErrorEnvelope
from storeserver.errors import StoreTimeout

router = APIRouter(route_class=MeteredRoute, tags=["probes"])
# A readiness probe asks often and is given little time (Kubernetes: 1 s by default): a store
# that does not answer ping by then is not ready, and the probe says so instead of timing out.
READY_TIMEOUT = 1.0


class Health(BaseModel):
    status: str = "ok"


class Readiness(BaseModel):
    ready: bool
    store_version: str | None = None


@router.get("/health", response_model=Envelope[Health], summary="Liveness")
async def read_health() -> Response:
    """200 while the process serves; touches nothing else."""
    body = {"status": "success", "data": {"status": "ok"}}
    return json_response(body, headers={"Cache-Control": PROBE_CACHE_CONTROL})


@router.get(
    "/ready",
    response_model=Envelope[Readiness],
    # Not error_responses(): a store that does not answer within READY_TIMEOUT is this 503,
    # never the 504 of a store timeout elsewhere.
    responses={
        503: {
            "model": ErrorEnvelope,
            "description": "Not ready: the store did not answer within 1 s or cannot be reached"
            " (`STORE_UNAVAILABLE`), or is still loading its data (`STORE_NOT_READY`); with"
            " Retry-After",
        }
    },
    summary="Readiness",
)
async def read_readiness(request: Request, store: StoreDep, settings: SettingsDep) -> Response:
    """200 when the store answers and has loaded its data, else 503."""
    try:
        # The whole answer within the probe's time: the call's own timeout starts once it is
        # sent, after a reconnection's set-up (QA: a store that took the handshake, then hung
        # the set-up, made the probe wait its STORE_TIMEOUT, 5 s).
        async with asyncio.timeout(READY_TIMEOUT):
            pong = await store.call("ping", {}, timeout=READY_TIMEOUT)
    except (StoreTimeout, TimeoutError):
        outage_warning("store_timeout")(command="ping", timeout_s=READY_TIMEOUT)
        return error_response(
            request,
            503,
            "STORE_UNAVAILABLE",
            f"The store did not answer within {READY_TIMEOUT:g} s",
            headers={"Retry-After": str(settings.store_retry_after)},
        )
    if not pong.get("ready"):
        return error_response(
            request,
            503,
            "STORE_NOT_READY",
            "The store is still loading its data",
            headers={"Retry-After": str(settings.store_retry_after)},
        )
    body = {"status": "success", "data": {"ready": True, "store_version": pong.get("version")}}
    return json_response(body, headers={"Cache-Control": PROBE_CACHE_CONTROL})
