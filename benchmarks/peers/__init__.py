"""Peers the serving benchmark compares the service with."""
