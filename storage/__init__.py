"""Storage: database engines, the connection pool, migrations and the stores.

Every SQL statement in Parley lives in this package. Stores are written with
``?`` placeholders and portable SQL; the engine adapts them to the database.
"""
