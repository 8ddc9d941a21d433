"""Helpers for tests that drive pages in Chromium (the `browser` and `page`
fixtures are in conftest.py)."""

import time


def wait_for(page, expression, arg=None, timeout=10_000):
    """Like page.wait_for_function, which evaluates its predicate with eval() in
    the page: our pages' Content-Security-Policy forbids that (as it should), so
    poll through page.evaluate, which DevTools runs outside the page's CSP."""
    deadline = time.monotonic() + timeout / 1000
    while not page.evaluate(expression, arg):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} ms waiting for {expression}")
        page.wait_for_timeout(50)
