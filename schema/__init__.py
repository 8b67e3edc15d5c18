"""Versioned SQL migrations, applied by ``storage.migrations``."""
