"""The scikit-learn estimator protocol (parameters, cloning, repr) without importing scikit-learn.

`EstimatorProtocol` gives a class whose ``__init__`` only stores its keyword arguments, the
``get_params``/``set_params``/``__repr__`` that scikit-learn's ``clone``, grid search and
conformance suite expect, as ``sklearn.base.BaseEstimator`` would, so that the library does
not depend on scikit-learn.
"""

from __future__ import annotations

import inspect
import sys

import numpy as np


class NotFittedError(ValueError, AttributeError):
    """The estimator has no weights yet: call `fit` or `partial_fit` first."""


def not_fitted(message: str) -> NotFittedError:
    """A NotFittedError that is also scikit-learn's when sklearn is loaded (never imported)."""
    exceptions = sys.modules.get("sklearn.exceptions")
    if exceptions is None:
        return NotFittedError(message)
    both = type("NotFittedError", (NotFittedError, exceptions.NotFittedError),
                {"__module__": NotFittedError.__module__})
    return both(message)


class EstimatorProtocol:
    """Base class: hyper-parameters are the ``__init__`` keyword arguments, stored as is."""

    @classmethod
    def _param_names(cls) -> list[str]:
        signature = inspect.signature(cls.__init__)
        return sorted(p.name for p in signature.parameters.values()
                      if p.name != "self" and p.kind == p.POSITIONAL_OR_KEYWORD)

    def get_params(self, deep=True):
        """Get the hyper-parameters of this estimator.

        Parameters
        ----------
        deep : bool, default=True
            Unused (no sub-estimators); kept for scikit-learn compatibility.

        Returns
        -------
        dict
            Parameter names mapped to their values.
        """
        return {name: getattr(self, name) for name in self._param_names()}

    def set_params(self, **params):
        """Set hyper-parameters; they take effect when the weights are next computed.

        That is at the first use after `fit`/`partial_fit`, or at an explicit `finalize`.

        Parameters
        ----------
        **params : dict
            Hyper-parameters by name.

        Returns
        -------
        self
        """
        valid = self._param_names()
        for name, value in params.items():
            if name not in valid:
                raise ValueError(f"Invalid parameter {name!r} for estimator {type(self).__name__}. "
                                 f"Valid parameters are: {valid}.")
            setattr(self, name, value)
        return self

    def __repr__(self):
        defaults = {p.name: p.default
                    for p in inspect.signature(type(self).__init__).parameters.values()}
        changed = []
        for name, value in self.get_params().items():
            default = defaults[name]
            same = value is default or (
                not isinstance(value, np.ndarray) and type(value) is type(default)
                and value == default)
            if not same:
                changed.append(f"{name}={value!r}")
        return f"{type(self).__name__}({', '.join(changed)})"
