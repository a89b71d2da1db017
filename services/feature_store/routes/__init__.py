"""The feature store's routes, one module per concern; app.py includes their routers."""
