"""Small accessors for the per-worker shared clients."""

from flask import current_app


def get_redis():
    return current_app.extensions["redis"]


def get_hub():
    return current_app.extensions["hub"]
