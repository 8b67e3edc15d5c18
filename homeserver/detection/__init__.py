"""Attack detection: detectors fed by the audit trail's sink and the event fan-out,
raising alerts (audit entry, metric, plugin hook, server notice)."""
