"""streamsolve.store."""
