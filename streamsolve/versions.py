"""Library versions for provenance, read from the installed distributions' metadata.

Nothing is imported to learn a version (``importlib.metadata`` reads the package metadata),
so recording provenance never loads Dask, Zarr or tokenizers, and never imports the
``streamsolve`` package itself (no import cycle through ``__init__``).
"""

from __future__ import annotations

from importlib import metadata

#: Distributions whose versions a store records.
PROVENANCE_PACKAGES = ("streamsolve", "numpy", "scipy", "dask", "zarr", "tokenizers")


def library_versions(packages: tuple[str, ...] = PROVENANCE_PACKAGES) -> dict[str, str]:
    """Installed version of each package, ``"unknown"`` when it is not installed.

    Parameters
    ----------
    packages : tuple of str
        Distribution names.

    Returns
    -------
    dict
        Package name -> version string.

    Examples
    --------
    >>> library_versions(("numpy", "no-such-package-xyz"))["no-such-package-xyz"]
    'unknown'
    """
    versions = {}
    for package in packages:
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = "unknown"
    return versions
