"""Placeholder package; populated by its issue."""
