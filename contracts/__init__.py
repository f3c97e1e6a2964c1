"""Typed values the parts of dflash-serve pass each other (engine -> router, autoscaler; ingress -> router)."""
