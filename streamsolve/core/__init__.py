"""streamsolve.core."""
