"""Ray Serve deployments of dflash-serve: the engine replica and the OpenAI ingress."""
