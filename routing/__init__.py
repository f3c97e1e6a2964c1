"""Request routing, pure: block hashing, the prefix index and the policies. No Ray, vLLM or I/O here.

The Ray Serve request router in ``deployments/router/request_router.py`` is a thin shell around this package, and
the simulator drives the same code.
"""
