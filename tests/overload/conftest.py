"""The gateway fixtures (real small bundle, real Redis under a unique prefix, real uvicorn)."""

from tests.gateway.conftest import (  # noqa: F401 - fixtures
    admin,
    bundle,
    dead_url,
    gw_settings,
    live,
    serve_app,
)
