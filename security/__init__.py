"""`make security`: the security sweep over every environment (see sweep.py)."""
