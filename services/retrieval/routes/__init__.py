"""The retrieval service's routes, one module per concern; app.py includes their routers."""
