"""REST servlets: parse, validate (schemas beside each servlet), call a handler, render."""
