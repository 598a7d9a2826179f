"""Dashboard pages: each module has ``layout(ctx, study, params)`` and ``register(app, ctx)``."""
