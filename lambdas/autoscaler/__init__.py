"""Autoscaler Lambda: a pure scaling decision (`policy`) and the handler doing the I/O."""
