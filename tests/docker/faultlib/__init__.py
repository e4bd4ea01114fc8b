"""Fault-injection test library: RESP client, writers, the compose environment, and checks."""
