"""Admin API handlers, one module per resource. Every handler has the
signature ``(Request, Access, Deps) -> AdminResponse`` and runs only after
``access.authorize`` passed for its route (see ``routes.py``)."""
