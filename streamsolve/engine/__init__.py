"""streamsolve.engine."""
