"""HTTP plumbing: routing, JSON request/response handling, errors, headers."""
