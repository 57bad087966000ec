"""Asynchronous tasks behind the Novita v3 ``/v3/async/*`` routes.

A submission becomes a ``Task`` row in a durable store, a runner moves it through
QUEUED -> PROCESSING -> SUCCEED/FAILED, and a webhook (when asked for) carries the
result to the client. Nothing here knows about HTTP routes or engines.
"""
