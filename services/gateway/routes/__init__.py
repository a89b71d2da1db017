"""Public API routers, one per resource."""
