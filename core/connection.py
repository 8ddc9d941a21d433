"""The client's TCP connection, for the rare moment we must cut it ourselves."""

import socket


def client_socket(environ):
    """The raw socket under this request (gunicorn puts it in the environ)."""
    return environ.get("gunicorn.socket") or environ.get("werkzeug.socket")


def aborter(environ):
    """A function that tears the connection down.

    Used for a client dropped as a slow consumer whose handler is blocked
    writing to it: shutting the socket down makes that write fail with EPIPE,
    which gunicorn treats as an ordinary client disconnect.
    """
    sock = client_socket(environ)

    def abort():
        if sock is None:
            return
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass  # already closed

    return abort
