"""Events in the federation (PDU) format: room versions, the event model, hashing,
signing, redaction and the authorization rules. Pure code: no I/O, no storage."""
