"""secagg: secure aggregation with distributed differential privacy."""
__version__ = "0.1.0"
