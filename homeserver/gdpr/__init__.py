"""Data-subject rights (GDPR): the data export (:mod:`homeserver.gdpr.export`, the job;
:mod:`homeserver.gdpr.archive`, the archive on disk). Erasure, consent and retention
come later in this package."""
