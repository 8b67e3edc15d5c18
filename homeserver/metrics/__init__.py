"""Prometheus metrics: one registry per homeserver (tests run several servers in one
process), served at ``/metrics`` only on listeners with the ``metrics`` resource.

One module per concern: :mod:`.registry` (the registry and the exposition),
:mod:`.http` (requests at the dispatch point), :mod:`.db` (transactions and the pool),
:mod:`.activity` (sync waiters, notifier, persisted events, rate limits, security
events, password hashing, WebSockets), :mod:`.process` (RSS, CPU, open FDs) and
:mod:`.ready` (the ``/ready`` probe). Label values are route templates, store
method names and other constants from the code: never a user id, room id, token or
message content.
"""
