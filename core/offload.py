"""Run CPU-heavy work (password hashing) off the gevent hub.

Under gevent a CPU-bound call in a greenlet stalls every connection of the
worker; gevent's thread pool runs it on a real thread while the hub goes on
serving. Outside gevent (CLI, tests, gthread workers) it is a plain call.
"""

from gevent import monkey


def run_blocking(function, *args):
    if monkey.is_module_patched("threading"):
        import gevent

        return gevent.get_hub().threadpool.apply(function, args)
    return function(*args)
