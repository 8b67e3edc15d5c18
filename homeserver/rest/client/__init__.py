"""Client-server API servlets, one module per endpoint family."""
