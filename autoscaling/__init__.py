"""The SLO autoscaling decision, pure (policy.py); Serve runs it through ``deployments/autoscaler.py``."""
