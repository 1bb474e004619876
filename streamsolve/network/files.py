"""The trained network on disk: a safetensors file beside the store, and its loader.

``STORE.networks/network-NNNN.safetensors`` (a new file per run, never overwritten) holds
the network's parameters (the residual and the explicit branch's scales) and, in its
safetensors metadata under ``streamsolve``, a JSON object: the format, the
`NetworkConfig`, the store and the id of the weights version it was trained on, and the
run's provenance (held-out figures, budget, curve). The explicit weights themselves are not
copied: `load` reads them from the store and refuses when the store's weights are no longer
the ones the network was trained on. Never pickle.
"""

from __future__ import annotations

import json
import os
import struct

from ..store.layout import StoreError

FORMAT = "streamsolve-network/1"
METADATA_KEY = "streamsolve"


def networks_dir(store: str) -> str:
    """Where ``train`` writes the networks of ``store`` by default."""
    return str(store).rstrip("/") + ".networks"


def save(module, folder: str, description: dict) -> str:
    """Write ``module``'s state as the next ``network-NNNN.safetensors`` of ``folder``.

    The file is written under a temporary name and linked to its final name, which must
    not exist yet, so nothing is overwritten and no half-written network is ever visible.
    Returns the path written.
    """
    from safetensors.torch import save_file

    os.makedirs(folder, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}
    metadata = {METADATA_KEY: json.dumps({"format": FORMAT, **description})}
    tmp = os.path.join(folder, f".network-{os.getpid()}.tmp")
    save_file(state, tmp, metadata=metadata)
    try:
        for number in range(1, 10000):
            path = os.path.join(folder, f"network-{number:04d}.safetensors")
            try:
                os.link(tmp, path)
                return path
            except FileExistsError:
                continue
        raise StoreError(f"{folder} holds 9999 networks: remove some")
    finally:
        os.unlink(tmp)


def read(path: str, storage_options: dict | None = None) -> tuple[dict, dict]:
    """``(description, state dict)`` of a network file (local path or fsspec URL).

    Raises
    ------
    StoreError
        Not a streamsolve network file.
    """
    import fsspec
    from safetensors.torch import load as load_bytes

    with fsspec.open(path, "rb", **(storage_options or {})) as handle:
        data = handle.read()
    try:
        (size,) = struct.unpack("<Q", data[:8])
        header = json.loads(data[8:8 + size])
        description = json.loads(header["__metadata__"][METADATA_KEY])
        if description.get("format") != FORMAT:
            raise ValueError(description.get("format"))
        state = load_bytes(data)
    except (struct.error, ValueError, KeyError, TypeError) as exc:
        raise StoreError(f"{path} is not a streamsolve network file ({FORMAT}): "
                         f"{type(exc).__name__}") from None
    return description, state


def load(path: str, store: str | None = None, device=None,
         storage_options: dict | None = None):
    """The trained network of ``path`` as a `ResidualLM` (``forward(contexts (B, K))``
    gives float64 logits), its explicit branch read from ``store`` (default: the store
    recorded in the file).

    Raises
    ------
    StoreError
        Not a network file, or the store's weights are not those it was trained on.
    """
    from ..extras import import_torch, torch_device
    from ..language_model import LanguageModel
    from ..store.model_store import ModelStore
    from .modules import NetworkConfig, build_network

    torch = import_torch()
    description, state = read(path, storage_options)
    config = NetworkConfig(**description["config"])
    weights = None
    if config.explicit:
        store = store or description["store"]
        view = ModelStore(store, storage_options).snapshot()
        current = (view.meta.get("weights") or {}).get("id")
        if current != description["weights_id"]:
            raise StoreError(f"{path} was trained on weights {description['weights_id']} of "
                             f"{store}, which now holds {current}: train again")
        weights = LanguageModel.open(view).weights
    module = build_network(config, weights, for_loading=True)
    module.load_state_dict(state)
    module.eval()
    return module.to(torch_device(torch, device))
