"""Delivery of notifications to push gateways (``/_matrix/push/v1/notify``).

One module per job: ``config`` (the ``push`` section), ``gateway`` (the SSRF-guarded
HTTP client), ``notification`` (building the gateway's JSON body), ``pusher`` (one
pusher's ordered queue with backoff and a stored position), ``pool`` (the pushers of
the server, fed by push actions and read receipts) and ``setup`` (the wiring).
"""
