"""Over-the-air delivery: ``ota.core`` (shared formats), ``ota.server`` (API) and ``ota.edge`` (agent)."""
