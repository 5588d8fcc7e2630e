"""The OTA server: FastAPI app, SQL state, blob store, TUF image repository, director and rollouts."""
