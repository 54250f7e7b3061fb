"""embstack serving: everything on the request path (bundle loading, routing, gRPC).

Never imports `trainer`; the serving image ships without it. Importing this package is
cheap: torch is imported by the modules that need it.
"""
