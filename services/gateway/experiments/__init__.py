"""A/B experiments: the config file (shared/experiments.py), sticky assignment (assignment.py), the
registry that reloads the file (registry.py), impressions and attribution in Redis (ledger.py),
and the statistics per arm (stats.py, report.py). docs/experiments.md is the user's guide."""
