"""The Ray/vLLM/HTTP shells, grouped by the deployment they serve: ``ingress/`` (the OpenAI front),
``engine/`` (the vLLM replica), ``router/`` (the request router), plus ``kv_stream.py`` (the Redis routing
stream the engine relay and the routers share) and ``autoscaler.py`` (the SLO policy in Serve's controller).
"""
