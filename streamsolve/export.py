"""Export a store's weights (safetensors or .npz, never pickle) and its tokenizer.

Three weight layouts (``metadata["layout"]``), all with the calibration scalars, the count
configuration and the weight parameters as JSON in the metadata:

- ``"sparse-rank-one"`` (default, any V): the store's explicit weights as they are. Per weight
  block ``b``: ``block{b}.indptr``, ``block{b}.indices``, ``block{b}.data`` (the CSR of ``S``),
  ``block{b}.row_terms``, ``block{b}.col_terms``; plus ``bias`` (``gamma log p``) and
  ``log_unigram``. ``logit_j(c) = bias_j + sum_r beta_{b(r)} W^(b(r))[c_r, j]``.
- ``"dense"``: the minimum-norm tables ``table{b}`` (V x V, float32; beta applied), the
  centred ``bias``, the per-sample constants ``row_offsets`` and ``offset`` (metadata);
  refused above a memory budget, naming ``--rank``.
- ``"low-rank"`` (``rank=d``): ``embedding{b}`` (V x d) and ``output{b}`` (d x V) of the
  best rank-d approximation of each minimum-norm block, ``bias``, ``row_offsets``.
- ``"refined-dense"`` / ``"refined-factored"``: weights written by ``streamsolve refine``,
  as stored (`refined_weight_arrays`).

The format follows the file name (``.npz``) unless given. In an ``.npz`` the metadata is
the JSON string ``__metadata__`` (a unicode array: ``np.load(allow_pickle=False)`` reads it).

Every output is written through `replacing_output`: an existing file is never replaced
unless ``force``, and the bytes go to a temporary file beside the output, renamed into place
only once complete, so a write error (a full disk), Ctrl-C or a damaged store leaves no
partial output and any previous one as it was.
"""

from __future__ import annotations

import contextlib
import io
import os
import uuid
from collections.abc import Sequence
import json
import logging

import numpy as np
import scipy.sparse as sp
from fsspec.core import url_to_fs

from .core.dense_lm import RefinedWeights
from .core.warm_start import check_dense_fits, min_norm_weights
from .extras import TORCH_HINT
from .engine.memory import parse_memory
from .store.layout import StoreError, is_disk_full
from .store.location import is_inside_store, is_local, zarr_location
from .store.model_store import ModelStore

logger = logging.getLogger(__name__)

FORMATS = ("safetensors", "npz")
LAYOUT_VERSION = "streamsolve-weights/1"


class OutputError(RuntimeError):
    """An export output that exists (and ``force`` was not given), or cannot be written."""


def check_output(out: str, store: str, storage_options: dict | None = None,
                 force: bool = False):
    """Refuse, before any work, an output inside the store, a directory, ``-``, or (unless
    ``force``) an existing file.

    Raises
    ------
    ValueError, OutputError
    """
    if is_inside_store(out, store, storage_options):
        raise ValueError(f"refusing to export to {out}: it is inside the store {store} and "
                         "would overwrite the store's own files; write it somewhere else")
    if str(out) == "-":
        raise ValueError("export writes files: give an output path (- is not stdout here)")
    if is_local(out):
        path = zarr_location(out)
        if os.path.isdir(path):
            raise ValueError(f"{out} is a directory: give a file path to write, e.g. "
                             f"{os.path.join(out, 'model.safetensors')}")
        exists = os.path.lexists(path)
    else:
        fs, path = url_to_fs(out, **(storage_options or {}))
        exists = fs.exists(path)
    if exists and not force:
        raise OutputError(f"{out} already exists: refusing to replace it (nothing was "
                          "written); pass --force to replace it, or choose another path")


def _write_error(out: str, exc: OSError) -> OutputError:
    why = "the disk is full" if is_disk_full(exc) else (exc.strerror or str(exc))
    return OutputError(f"cannot write {out}: {why}; no partial output was left and an "
                       f"existing {out} is unchanged: free space or choose another path")


class _Output:
    """A binary file handle whose write errors are `OutputError` (one line for the user),
    so they are told apart from errors reading the store."""

    def __init__(self, handle, out: str):
        self._handle, self._out = handle, out

    def write(self, data) -> int:
        try:
            return self._handle.write(data)
        except OSError as exc:
            raise _write_error(self._out, exc) from exc

    def __getattr__(self, name):
        return getattr(self._handle, name)


@contextlib.contextmanager
def replacing_output(out: str, storage_options: dict | None = None, force: bool = False):
    """A binary handle to write ``out`` through; the output appears only if the block
    completes.

    Local: a temporary ``.NAME.<token>.partial`` beside ``out``, flushed to disk, then
    linked to ``out`` (which fails if a file appeared there meanwhile) or, with ``force``,
    renamed over it. URLs: a temporary object beside ``out``, moved into place (the check for
    an existing object is made just before). On any failure the temporary is removed.
    """
    if not is_local(out):
        with _replacing_object(out, storage_options, force) as handle:
            yield handle
        return
    path = os.path.abspath(zarr_location(out))
    folder, name = os.path.split(path)
    temp = os.path.join(folder, f".{name}.{uuid.uuid4().hex[:12]}.partial")
    try:
        handle = open(temp, "xb")
    except OSError as exc:
        raise _write_error(out, exc) from exc
    try:
        yield _Output(handle, out)
        try:
            handle.flush()
            os.fsync(handle.fileno())
            handle.close()
        except OSError as exc:
            raise _write_error(out, exc) from exc
        _publish(temp, path, out, force)
    finally:
        with contextlib.suppress(OSError):  # after a failed write, closing fails again
            handle.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp)


def _publish(temp: str, path: str, out: str, force: bool):
    """Put the complete ``temp`` at ``path``: never over a file unless ``force``."""
    try:
        if force:
            os.replace(temp, path)
            return
        try:
            os.link(temp, path)  # atomic, and refuses a file that appeared meanwhile
        except FileExistsError:
            raise OutputError(f"{out} appeared while it was being written: it was left as "
                              "it is; pass --force to replace it") from None
        except OSError:  # a file system without hard links
            if os.path.lexists(path):
                raise OutputError(f"{out} appeared while it was being written: it was left "
                                  "as it is; pass --force to replace it") from None
            os.rename(temp, path)
    except OSError as exc:
        raise _write_error(out, exc) from exc


@contextlib.contextmanager
def _replacing_object(out: str, storage_options: dict | None, force: bool):
    fs, path = url_to_fs(out, **(storage_options or {}))
    temp = f"{path}.{uuid.uuid4().hex[:12]}.partial"
    try:
        with fs.open(temp, "wb") as handle:
            yield _Output(handle, out)
        if not force and fs.exists(path):
            raise OutputError(f"{out} appeared while it was being written: it was left as "
                              "it is; pass --force to replace it")
        fs.mv(temp, path)
    finally:
        with contextlib.suppress(Exception):
            if fs.exists(temp):
                fs.rm(temp)


def _format_of(out: str, fmt: str | None) -> str:
    if fmt is None:
        return "npz" if str(out).endswith(".npz") else "safetensors"
    if fmt not in FORMATS:
        raise ValueError(f"--format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    return fmt


def _serialise(arrays: dict, metadata: dict, fmt: str) -> bytes:
    arrays = {name: np.ascontiguousarray(value) for name, value in arrays.items()}
    text = {key: value if isinstance(value, str) else json.dumps(value)
            for key, value in metadata.items()}
    if fmt == "npz":
        buffer = io.BytesIO()
        np.savez_compressed(buffer, __metadata__=np.array(json.dumps(text)), **arrays)
        return buffer.getvalue()
    try:
        from safetensors.numpy import save
    except ImportError as exc:
        raise ImportError(f"safetensors is not installed: {TORCH_HINT}, or use --format npz") \
            from exc
    return save(arrays, metadata=text)


def read_export(path: str) -> tuple[dict, dict]:
    """Arrays and (JSON-decoded) metadata of a file written by `export_weights`."""
    if str(path).endswith(".npz"):
        with np.load(path, allow_pickle=False) as data:
            arrays = {name: data[name] for name in data.files if name != "__metadata__"}
            text = json.loads(str(data["__metadata__"]))
    else:
        from safetensors import safe_open

        with safe_open(str(path), framework="numpy") as handle:
            arrays = {name: handle.get_tensor(name) for name in handle.keys()}
            text = handle.metadata()
    metadata = {}
    for key, value in text.items():
        try:
            metadata[key] = json.loads(value)
        except ValueError:
            metadata[key] = value
    return arrays, metadata


def weight_arrays(weights, layout: str = "sparse-rank-one", rank: int | None = None,
                  max_bytes: int | None = None, n_iter: int = 7) -> tuple[dict, dict]:
    """The arrays and metadata of one export layout of `ExplicitWeights` (see module doc)."""
    if isinstance(weights, RefinedWeights):
        return refined_weight_arrays(weights, layout)
    if hasattr(weights, "ngram_parts"):  # issue 24 hook: n-gram blocks beside the offsets
        from .ngram_export import ngram_weight_arrays

        return ngram_weight_arrays(weights, layout, lambda offsets, form: weight_arrays(
            offsets, form, rank, max_bytes, n_iter))
    config = weights.config
    offset_blocks = [weights.block_of_offset(r) for r in range(config.radius)]
    metadata = {"format": LAYOUT_VERSION, "layout": layout,
                "config": {"vocab_size": config.vocab_size, "radius": config.radius,
                           "aggregation": config.aggregation, "bos_id": config.bos_id},
                "params": weights.params(), "beta": [float(b) for b in weights.beta],
                "gamma": float(weights.gamma), "calibrated": bool(weights.calibrated),
                "offset_blocks": offset_blocks}
    arrays = {}
    if layout == "sparse-rank-one":
        for b, block in enumerate(weights.blocks):
            S = sp.csr_array(block.sparse)
            arrays.update({f"block{b}.indptr": S.indptr.astype(np.int64),
                           f"block{b}.indices": S.indices.astype(np.int64),
                           f"block{b}.data": S.data.astype(np.float64),
                           f"block{b}.row_terms": block.row_terms,
                           f"block{b}.col_terms": block.col_terms})
        arrays.update(bias=np.asarray(weights.bias, dtype=np.float64),
                      log_unigram=weights.log_unigram)
        return arrays, metadata
    warm = min_norm_weights(weights)
    arrays.update(bias=warm.bias, row_offsets=warm.row_offsets)
    metadata["offset"] = warm.offset
    V = config.vocab_size
    if layout == "dense":
        check_dense_fits(V, len(warm.blocks), 4, max_bytes)
        for b, block in enumerate(warm.blocks):
            arrays[f"table{b}"] = block.dense().astype(np.float32)
        return arrays, metadata
    if layout != "low-rank":
        raise ValueError(f"unknown export layout {layout!r}")
    from .core.low_rank import low_rank_factors

    metadata["rank"] = int(rank)
    for b, block in enumerate(warm.blocks):
        E, B = low_rank_factors(block, int(rank), n_iter=n_iter)
        arrays[f"embedding{b}"], arrays[f"output{b}"] = E, B
    return arrays, metadata


def refined_weight_arrays(weights: RefinedWeights, layout: str) -> tuple[dict, dict]:
    """The arrays of refined weights (``streamsolve refine``), as the store holds them:
    ``"refined-dense"`` (``table{b}`` V x V, ``bias``) or ``"refined-factored"``
    (``embedding{b}``, ``output{b}``, ``row_offsets{b}``, ``bias``)."""
    if layout != "sparse-rank-one":
        raise ValueError("the store holds refined weights: they are exported as stored "
                         "(drop --dense / --rank), or run `streamsolve finalize` first")
    config = weights.config
    kind = "refined-dense" if weights.tables is not None else "refined-factored"
    metadata = {"format": LAYOUT_VERSION, "layout": kind,
                "config": {"vocab_size": config.vocab_size, "radius": config.radius,
                           "aggregation": config.aggregation, "bos_id": config.bos_id},
                "params": weights.params(),
                "offset_blocks": [weights.block_of_offset(r) for r in range(config.radius)]}
    arrays = {"bias": np.asarray(weights.bias, dtype=np.float32)}
    if weights.tables is not None:
        arrays.update({f"table{b}": t for b, t in enumerate(weights.tables)})
    else:
        for b, (E, B, offsets) in enumerate(weights.factors):
            arrays.update({f"embedding{b}": E, f"output{b}": B,
                           f"row_offsets{b}": np.asarray(offsets, dtype=np.float32)})
    return arrays, metadata


def export_weights(store: str, out: str, fmt: str | None = None, rank: int | None = None,
                   dense: bool = False, max_bytes: int | None = None,
                   storage_options: dict | None = None, allow_stale: bool = False,
                   force: bool = False) -> dict:
    """Write a store's weights to ``out`` (safetensors or .npz).

    Parameters
    ----------
    store : str
        A finalized store.
    out : str
        Output path or fsspec URL (not inside the store).
    fmt : {"safetensors", "npz"}, optional
        Default from the suffix (``.npz``), else safetensors.
    rank : int, optional
        Write the rank-d factors of the minimum-norm blocks (``"low-rank"``).
    dense : bool
        Write the dense minimum-norm tables (``"dense"``), within ``max_bytes`` (default half
        the RAM).
    force : bool
        Replace an existing ``out`` (refused otherwise, before any work).

    Returns
    -------
    dict
        ``out``, ``format``, ``layout``, ``arrays`` (names), ``bytes``.
    """
    from .language_model import LanguageModel

    if rank is not None and dense:
        raise ValueError("--rank and --dense are two layouts: pass one of them")
    check_output(out, store, storage_options, force)
    fmt = _format_of(out, fmt)
    weights = LanguageModel.open(store, storage_options, allow_stale=allow_stale).weights
    layout = "low-rank" if rank is not None else "dense" if dense else "sparse-rank-one"
    if layout == "dense" and max_bytes is None:
        from .engine.memory import total_ram

        max_bytes = total_ram() // 2
    arrays, metadata = weight_arrays(weights, layout, rank, max_bytes)
    layout = metadata["layout"]  # refined weights are exported as stored
    payload = _serialise(arrays, metadata, fmt)
    with replacing_output(out, storage_options, force) as handle:
        handle.write(payload)
    logger.info("exported %s weights (%s) to %s: %d arrays, %d bytes", layout, fmt, out,
                len(arrays), len(payload))
    return {"out": out, "format": fmt, "layout": layout, "arrays": sorted(arrays),
            "bytes": len(payload)}


def export_tokenizer(store: str, out: str, storage_options: dict | None = None,
                     force: bool = False) -> dict:
    """Write the store's tokenizer JSON (as stored, checksum verified) to ``out`` (an
    existing file only with ``force``)."""
    check_output(out, store, storage_options, force)
    data = ModelStore(store, storage_options).snapshot().tokenizer_text().encode("utf-8")
    with replacing_output(out, storage_options, force) as handle:
        handle.write(data)
    return {"tokenizer": out, "bytes": len(data)}


def dense_export_bytes(vocab_size: int, nnz: Sequence[int]) -> int:
    """Peak bytes of `export_counts`: one dense V x V int64 block at a time, plus the sparse
    (CSR) block it comes from, read as row blocks and stacked (twice its size), and the
    unigram."""
    sparse = max(nnz, default=0) * (8 + 4) + (vocab_size + 1) * 8
    return vocab_size * vocab_size * 8 + 2 * sparse + vocab_size * 8


def export_counts(store: str, out: str, storage_options: dict | None = None,
                  memory: str | int | None = None, force: bool = False) -> dict:
    """Write dense ``counts_1..counts_R`` (V x V) and ``unigram`` to an ``.npz`` file.

    The blocks are densified and written one at a time (compressed), so the memory needed
    is one V x V int64 block plus its sparse form (`dense_export_bytes`).

    Parameters
    ----------
    memory : str or int, optional
        The memory budget (``--memory``: ``2GB``, ``80%``...; default half the RAM).
    force : bool
        Replace an existing ``out`` (refused otherwise, before any work).

    Raises
    ------
    ValueError
        If the export would need more memory than ``memory``.
    OutputError
        If ``out`` exists (without ``force``) or cannot be written; no partial file is left.
    """
    import zipfile

    from dask.utils import format_bytes

    check_output(out, store, storage_options, force)
    model_store = ModelStore(store, storage_options).snapshot()  # unigram and pairs agree
    config = model_store.config
    V = config.vocab_size
    budget = parse_memory(memory)
    need = dense_export_bytes(V, model_store.meta["counts"]["nnz"])
    if need > budget:
        raise ValueError(
            f"exporting the counts of {store} densely needs about {format_bytes(need)} (a "
            f"{V} x {V} int64 block at a time), over the memory budget of "
            f"{format_bytes(budget)}: raise --memory, or read them sparse in Python with "
            f"streamsolve.ModelStore({store!r}).read_count_block(r) (a scipy CSR array)")
    names = ["unigram"] + [f"counts_{r + 1}" for r in range(config.n_blocks)]
    with replacing_output(out, storage_options, force) as handle, \
            zipfile.ZipFile(handle, "w", zipfile.ZIP_DEFLATED, allowZip64=True) as archive:
        for r, name in enumerate(names, start=-1):  # what np.savez_compressed writes
            array = model_store.read_unigram() if r < 0 else \
                model_store.read_count_block(r).toarray()
            with archive.open(f"{name}.npy", "w", force_zip64=True) as entry:
                np.lib.format.write_array(entry, array, allow_pickle=False)
            del array
    return {"out": out, "arrays": sorted(names), "vocab_size": V}


def export_arpa(store: str, out: str, storage_options: dict | None = None,
                force: bool = False) -> dict:
    """Write the store's n-gram model to ``out`` (ARPA text).

    Raises
    ------
    StoreError
        When the store has no n-gram weights (counted without ``--ngram``, or weights
        finalized before).
    OutputError, ValueError
        As `check_output`.
    """
    from .core.arpa import arpa_text
    from .core.ngram_weights import NgramWeights
    from .engine.finalize import read_store_weights  # noqa: here to keep imports lazy

    check_output(out, store, storage_options, force)
    view = ModelStore(store, storage_options).snapshot()
    weights = read_store_weights(view)
    if not isinstance(weights, NgramWeights):
        raise StoreError(f"store {store} has no n-gram blocks to export as ARPA: count a store "
                         "with --ngram N (then finalize it) first")
    written = 0
    with replacing_output(out, storage_options, force) as handle:
        for piece in arpa_text(weights.model):
            data = piece.encode("utf-8")
            handle.write(data)
            written += len(data)
    model = weights.model
    sizes = [model.config.vocab_size] + [level.nnz for level in model.levels]
    logger.info("exported the order-%d n-gram model to %s: %s n-grams per order, %d bytes",
                model.config.order, out, sizes, written)
    return {"arpa": out, "order": model.config.order, "ngrams": sizes, "bytes": written}
