"""ZenML pipelines: wiring only. Parameters live in ``configs/*.yaml``; the work lives in ``ml/``."""
