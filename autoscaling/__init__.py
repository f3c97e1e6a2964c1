"""Autoscaling of engine deployments (Serve settings now; the custom policy has its own issue)."""
