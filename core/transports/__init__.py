"""The three transports of a channel: `sse`, `longpoll` and `websocket`.

Each owns its framing, how it encodes a hub message (once per worker, through
`Message.encoded`) and a Reset, and its loop: sending, keepalives, the reset
policy an app passes in, closing a slow consumer, and noticing a client that
has gone. Blueprints hand them a subscription; none keeps a loop of its own.
"""
