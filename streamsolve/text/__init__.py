"""streamsolve.text."""
