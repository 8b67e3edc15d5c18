"""One store per table family. Each takes a :class:`~storage.database.Database`."""
