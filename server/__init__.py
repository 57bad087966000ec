"""omniserve's HTTP layer: the Litestar app, auth, errors and routes."""
