"""The edge agent: poll, verify, download, A/B install, health check, commit or roll back, report."""
