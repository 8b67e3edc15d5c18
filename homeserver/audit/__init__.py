"""The audit trail: one module owns it (issue 14, "Audit trail").

- :mod:`homeserver.audit.chain`: canonical encoding, hash chain, verification (pure).
- :mod:`homeserver.audit.context`: the request an entry is recorded for (IP, user agent,
  request id), so callers deep in the stack need not pass it along.
- :class:`homeserver.handlers.security_events.SecurityEventRecorder`: the one writer.
- :mod:`homeserver.audit.service`: verify, export, head, query.
- :mod:`homeserver.audit.retention`: the daily purge with checkpoints.
"""
