"""streamsolve.classifier.estimator."""
