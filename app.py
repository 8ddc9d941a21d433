"""The application factory: `gunicorn -c gunicorn.conf.py 'app:create_app()'`.

Importing this module does nothing: gunicorn calls create_app() in each worker
(after gevent has patched the standard library), and `flask --app app` finds
the factory by its name. Redis clients are created there but connect on first
use, and the hub's listener starts with the first subscriber.
"""

import logging
import os
import socket
import weakref

from flask import Flask
from werkzeug.middleware.proxy_fix import ProxyFix

from core import errors, metrics, offload, quotas, security
from core.bodies import BodyReader
from core.config import ConfigError, load_settings
from core.hub import Hub
from core.procs import procs_cli
from core.redis_connections import RedisConnections
from core.sessions import RedisSessionInterface
from core.transports import websocket
from core.users import UserStore, users_cli


def _log_like_gunicorn():
    """Under gunicorn, the app's loggers (core.hub, ...) write where and how
    gunicorn's error log does."""
    gunicorn_log = logging.getLogger("gunicorn.error")
    if not gunicorn_log.handlers:
        return
    for name in ("core", "blueprints"):
        logger = logging.getLogger(name)
        logger.handlers = gunicorn_log.handlers
        logger.setLevel(gunicorn_log.level)
        logger.propagate = False


class RealtimeFlask(Flask):
    """Flask, asking once per function whether it is a coroutine function.

    Flask wraps every view and hook it calls in ensure_sync(), which asks
    inspect.iscoroutinefunction() each time: eight times per request here,
    about 6% of a request's time. The answer never changes for a function,
    so it is kept, weakly: a function made per request (an
    after_this_request closure, a class-based view's bound method) takes
    its entry with it when it goes."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._is_sync = weakref.WeakKeyDictionary()  # function -> not a coroutine function

    def ensure_sync(self, func):
        try:
            if self._is_sync[func]:
                return func
        except KeyError:
            sync = super().ensure_sync(func)
            self._is_sync[func] = sync is func  # (a bool: the value must not hold the key)
            return sync
        except TypeError:  # cannot be weakly referenced: ask each time
            pass
        return super().ensure_sync(func)


def create_app(config=None):
    app = RealtimeFlask(__name__, static_folder="static", template_folder="templates")
    app.config.update(load_settings())
    if config:
        app.config.update(config)
    if not app.config["REDIS_URL"] and not app.config["REDIS_SENTINELS"]:
        raise ConfigError(
            "REDIS_URL is not set and no embedded Redis is running: "
            "start the server with `make run`, or set REDIS_URL (or REDIS_SENTINELS)"
        )
    app.config["MAX_CONTENT_LENGTH"] = app.config["MAX_MESSAGE_BYTES"]
    app.wsgi_app = BodyReader(
        app.wsgi_app,
        app.config["MAX_CONTENT_LENGTH"],
        app.config["BODY_TIMEOUT_SECONDS"],
        app.config["BODY_MIN_BYTES_PER_SECOND"],
    )
    if app.config["TRUSTED_PROXIES"]:
        # Behind nginx: the client's address (rate limits), scheme (Secure
        # cookies) and Host (Origin checks) come from the X-Forwarded-* headers
        # the last TRUSTED_PROXIES hops added; anything a client sent is ignored.
        hops = app.config["TRUSTED_PROXIES"]
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=hops, x_proto=hops, x_host=hops)
    app.config["SESSION_COOKIE_SECURE"] = app.config["APP_ENV"] == "production"

    connections = app.extensions["redis_connections"] = RedisConnections.from_settings(app.config)
    # A bounded pool: 10,000 clients of a worker share at most REDIS_POOL_SIZE
    # connections (waiting up to 5 s for a free one) instead of opening one each.
    redis_client = app.extensions["redis"] = connections.client(
        max_connections=app.config["REDIS_POOL_SIZE"], timeout=5
    )
    app.extensions["hub"] = Hub(
        redis_client,
        connections,
        prefix=app.config["REDIS_PREFIX"],
        queue_size=app.config["SUBSCRIBER_QUEUE_SIZE"],
        queue_bytes=app.config["SUBSCRIBER_QUEUE_BYTES"],
        maxlen=app.config["STREAM_MAXLEN"],
        ttl_seconds=app.config["STREAM_TTL_SECONDS"],
        min_replicas=app.config["PUBLISH_MIN_REPLICAS"],
        replica_timeout_ms=app.config["PUBLISH_REPLICA_TIMEOUT_MS"],
    )
    app.extensions["users"] = UserStore(redis_client, app.config["REDIS_PREFIX"])
    app.session_interface = RedisSessionInterface(
        redis_client, app.config["REDIS_PREFIX"], app.config["SESSION_IDLE_SECONDS"]
    )
    app.cli.add_command(users_cli)
    app.cli.add_command(procs_cli)

    offload.warm_up_imports()
    _log_like_gunicorn()
    errors.register_error_handlers(app)
    metrics.init_app(app)
    security.init_app(app)
    quotas.init_app(app)
    websocket.init_app(app)

    from blueprints import (
        auth,
        channels,
        cities,
        clock,
        cookies,
        draw,
        echo,
        editor,
        home,
        jobs,
        lab,
        longpoll,
        processes,
        qa,
        ticker,
        track,
    )

    for module in (
        home,
        auth,
        channels,
        cities,
        cookies,
        longpoll,
        clock,
        qa,
        ticker,
        editor,
        echo,
        draw,
        track,
        processes,
        lab,
        jobs,
    ):
        app.register_blueprint(module.bp)

    from core import lifecycle

    @app.after_request
    def count_request(response):
        lifecycle.requests_served[0] += 1
        return response

    if app.config["SERVED_BY_HEADER"]:
        host = socket.gethostname()

        @app.after_request
        def add_served_by(response):
            response.headers["X-Served-By"] = f"{host}/{os.getpid()}"
            return response

    return app
