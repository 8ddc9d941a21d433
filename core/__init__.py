"""Shared mechanisms (no routes). Nothing here connects at import time."""
