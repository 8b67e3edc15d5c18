"""Push rules: the spec's predefined rules and a pure evaluator.

The evaluator decides, per user, whether an event notifies and highlights; /sync's
``unread_notifications`` counts (and pushers, later) are built on it.
"""
