"""GET /v1/experiments and GET /v1/experiments/{name}: what runs, and how each arm is doing."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, HTTPException, Path

from services.gateway.deps import GatewayDep
from services.gateway.experiments.report import build_report
from services.gateway.responses import JSON
from shared.openapi import error_response

router = APIRouter(tags=["experiments"])


@router.get("/v1/experiments", summary="Experiments in the file, the active one, load errors")
async def list_experiments(gateway: GatewayDep) -> JSON:
    return JSON(gateway.experiments.status())


@router.get("/v1/experiments/{name}", responses={404: error_response(404)},
            summary="Per-arm online metrics with 95% CIs and tests against control")
async def experiment_report(gateway: GatewayDep,
                            name: Annotated[str, Path(min_length=1, max_length=64)]) -> JSON:
    config = gateway.experiments.config
    exp = config.experiments.get(name)
    if exp is None:
        raise HTTPException(404, f"no experiment {name!r} in the experiments file "
                                 f"(known: {', '.join(sorted(config.experiments)) or 'none'})")
    if gateway.ledger is None:
        raise HTTPException(503, "the experiments ledger (Redis) is not connected yet")
    counts = await gateway.ledger.arm_counts(name, [a.name for a in exp.arms])
    active = config.active is exp
    return JSON(build_report(exp, counts, len(gateway.catalog.meta), active))
