"""An on-disk store of predicted candidate spectra, keyed by structure content and model weights.

Predicting 100,000 candidates takes minutes; ranking them against a live scan must not redo it.
:class:`CandidateStore` keeps every prediction under a folder per model weights (the sha256 of
the weights file), in chunks of ``.npz`` files (numpy arrays only, no pickles) written
atomically, plus a ``manifest.json``::

    <root>/<model>-<sha256[:16]>/manifest.json      model, weights sha256, energies, chunk list
    <root>/<model>-<sha256[:16]>/chunk-000000.npz   keys, names, provenance, mean, std

A candidate's key is :func:`structure_hash` of its content (kind, element symbols, coordinates
to 1e-6 A or 1e-6 in fractional units, lattice), so the same structure reached from another
source, file or name is predicted once. Other weights (a retrained model) get another folder:
nothing predicted by old weights is ever returned for new ones.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections import OrderedDict
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

#: Format version of the manifest; a store of another version is refused.
STORE_FORMAT = 1


class StoreError(ValueError):
    """A store folder or file is unusable; the message names it."""


def structure_hash(item: Any) -> str:
    """Content key of a candidate: sha256 over kind, element symbols and rounded coordinates.

    Parameters
    ----------
    item : pymatgen Structure or Molecule, or an object with ``symbols`` and ``cart``
        (:class:`models.graph_batch.MoleculeSpec`) or ``elements`` and ``xyz`` (a QM9 record).

    Returns
    -------
    str
        64 hex digits. A molecule gives the same key as a pymatgen ``Molecule``, a ``MoleculeSpec``
        or a QM9 record.
    """
    digest = hashlib.sha256()
    if hasattr(item, "lattice"):
        symbols = [site.specie.symbol if site.is_ordered else str(site.species) for site in item]
        digest.update(b"crystal|")
        digest.update(np.round(np.asarray(item.lattice.matrix, dtype=np.float64), 6).tobytes())
        coords = np.round(np.asarray(item.frac_coords, dtype=np.float64) % 1.0, 6) % 1.0
    else:
        if hasattr(item, "cart_coords"):
            symbols = [site.specie.symbol if site.is_ordered else str(site.species) for site in item]
            cart = item.cart_coords
        elif hasattr(item, "symbols") and hasattr(item, "cart"):
            symbols, cart = list(item.symbols), item.cart
        elif hasattr(item, "elements") and hasattr(item, "xyz"):
            symbols, cart = list(item.elements), item.xyz
        else:
            raise TypeError(f"cannot hash a candidate of type {type(item).__name__}")
        digest.update(b"molecule|")
        digest.update(str(int(round(float(getattr(item, "charge", 0) or 0)))).encode() + b"|")
        coords = np.round(np.asarray(cart, dtype=np.float64), 6)
    digest.update("|".join(symbols).encode())
    digest.update(np.ascontiguousarray(coords + 0.0).tobytes())  # + 0.0: -0.0 -> 0.0
    return digest.hexdigest()


def _atomic_savez(path: Path, **arrays: np.ndarray) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.stem, suffix=".tmp.npz")
    os.close(fd)
    try:
        np.savez(tmp, **arrays)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _atomic_write_text(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.stem, suffix=".tmp")
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    os.replace(tmp, path)


class CandidateStore:
    """Predicted spectra of one model's weights, in chunks on disk.

    Parameters
    ----------
    root : str or Path
        The store's root folder (created); one sub-folder per model weights.
    model : str
        Model name (``"o-k"``), used in the folder name.
    weights_sha256 : str
        sha256 of the weights file (64 hex digits): the second half of every key.
    energies : array-like
        The model's energy grid; a store whose grid differs is refused.
    cache_chunks : int
        Chunks kept in memory by :meth:`load` (bounds its memory).

    Raises
    ------
    StoreError
        The folder holds a store of another model, weights, grid or format.
    """

    def __init__(self, root: str | os.PathLike, model: str, weights_sha256: str, energies: Sequence[float],
                 cache_chunks: int = 8) -> None:
        if len(weights_sha256) != 64 or any(c not in "0123456789abcdef" for c in weights_sha256):
            raise StoreError(f"weights_sha256 must be 64 lowercase hex digits, got {weights_sha256!r}")
        self.root = Path(root)
        self.model = str(model)
        self.weights_sha256 = weights_sha256
        self.energies = np.asarray(energies, dtype=np.float64)
        self.folder = self.root / f"{self.model}-{weights_sha256[:16]}"
        self.folder.mkdir(parents=True, exist_ok=True)
        self.manifest_path = self.folder / "manifest.json"
        self._chunks: list[str] = []
        self._index: dict[str, tuple[int, int]] = {}
        self._cache: OrderedDict[int, dict[str, np.ndarray]] = OrderedDict()
        self.cache_chunks = max(1, int(cache_chunks))
        if self.manifest_path.exists():
            self._open()
        else:
            self._write_manifest()

    @classmethod
    def for_predictor(cls, root: str | os.PathLike, predictor: Any, **kw) -> "CandidateStore":
        """The store of a loaded :class:`models.predictor.Predictor`'s weights under ``root``."""
        return cls(root, predictor.name, predictor.weights_sha256, predictor.energies, **kw)

    # -- manifest --------------------------------------------------------------------------
    def _write_manifest(self) -> None:
        doc = {"format": STORE_FORMAT, "model": self.model, "weights_sha256": self.weights_sha256,
               "energies_eV": self.energies.tolist(), "chunks": self._chunks, "candidates": len(self._index)}
        _atomic_write_text(self.manifest_path, json.dumps(doc, indent=1) + "\n")

    def _open(self) -> None:
        try:
            doc = json.loads(self.manifest_path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise StoreError(f"{self.manifest_path}: unreadable store manifest ({exc})") from None
        if doc.get("format") != STORE_FORMAT:
            raise StoreError(f"{self.manifest_path}: store format {doc.get('format')!r}, expected {STORE_FORMAT}")
        if doc.get("weights_sha256") != self.weights_sha256:
            raise StoreError(f"{self.manifest_path}: holds weights {str(doc.get('weights_sha256'))[:16]}..., "
                             f"not {self.weights_sha256[:16]}...")
        grid = np.asarray(doc.get("energies_eV", []), dtype=np.float64)
        if grid.shape != self.energies.shape or not np.allclose(grid, self.energies, atol=1e-6):
            raise StoreError(f"{self.manifest_path}: energy grid differs from model {self.model!r}'s")
        for name in doc.get("chunks", []):
            path = self.folder / name
            if not path.is_file():
                raise StoreError(f"{path}: chunk listed in the manifest is missing")
            self._register(name, self._read_keys(path))

    @staticmethod
    def _read_keys(path: Path) -> np.ndarray:
        try:
            with np.load(path, allow_pickle=False) as data:
                return data["keys"]
        except (OSError, KeyError, ValueError) as exc:
            raise StoreError(f"{path}: unreadable store chunk ({exc})") from None

    def _register(self, name: str, keys: np.ndarray) -> None:
        number = len(self._chunks)
        self._chunks.append(name)
        for row, key in enumerate(keys.tolist()):
            self._index.setdefault(key, (number, row))

    # -- queries ---------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._index)

    def __contains__(self, key: str) -> bool:
        return key in self._index

    @property
    def chunks(self) -> list[str]:
        """File names of the chunks, in the order written."""
        return list(self._chunks)

    def missing(self, keys: Sequence[str]) -> list[str]:
        """The keys (in order, without repeats) the store has no prediction for."""
        seen: set[str] = set()
        out = []
        for key in keys:
            if key not in self._index and key not in seen:
                seen.add(key)
                out.append(key)
        return out

    def add(self, keys: Sequence[str], names: Sequence[str], provenance: Sequence[str],
            mean: np.ndarray, std: np.ndarray) -> str | None:
        """Write one chunk of new predictions (keys already stored are dropped); its file name."""
        mean, std = np.asarray(mean, dtype=np.float32), np.asarray(std, dtype=np.float32)
        n = len(keys)
        if not (len(names) == len(provenance) == n and mean.shape == std.shape == (n, len(self.energies))):
            raise ValueError(f"add: {n} keys need {n} names, provenances and ({n}, {len(self.energies)}) spectra")
        keep, seen = [], set()
        for i, key in enumerate(keys):
            if key not in self._index and key not in seen:
                seen.add(key)
                keep.append(i)
        if not keep:
            return None
        name = f"chunk-{len(self._chunks):06d}.npz"
        _atomic_savez(self.folder / name, keys=np.array([keys[i] for i in keep], dtype="U64"),
                      names=np.array([str(names[i]) for i in keep]),
                      provenance=np.array([str(provenance[i]) for i in keep]),
                      mean=mean[keep], std=std[keep])
        self._register(name, np.array([keys[i] for i in keep]))
        self._write_manifest()
        return name

    def _chunk(self, number: int) -> dict[str, np.ndarray]:
        cached = self._cache.get(number)
        if cached is not None:
            self._cache.move_to_end(number)
            return cached
        path = self.folder / self._chunks[number]
        with np.load(path, allow_pickle=False) as data:
            arrays = {k: data[k] for k in ("keys", "names", "provenance", "mean", "std")}
        self._cache[number] = arrays
        while len(self._cache) > self.cache_chunks:
            self._cache.popitem(last=False)
        return arrays

    def load(self, keys: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """Mean and std ``(len(keys), E)`` of stored keys, in the order given.

        Raises
        ------
        KeyError
            A key is not in the store (the message gives the first such key).
        """
        n_e = len(self.energies)
        mean = np.empty((len(keys), n_e), dtype=np.float32)
        std = np.empty((len(keys), n_e), dtype=np.float32)
        where: dict[int, list[tuple[int, int]]] = {}
        for out_row, key in enumerate(keys):
            try:
                number, row = self._index[key]
            except KeyError:
                raise KeyError(f"{self.folder}: no stored prediction for key {key}") from None
            where.setdefault(number, []).append((out_row, row))
        for number, pairs in where.items():
            chunk = self._chunk(number)
            outs, rows = np.array([p[0] for p in pairs]), np.array([p[1] for p in pairs])
            mean[outs], std[outs] = chunk["mean"][rows], chunk["std"][rows]
        return mean, std

    def iter_chunks(self) -> Iterator[dict[str, np.ndarray]]:
        """Every chunk's arrays (``keys``, ``names``, ``provenance``, ``mean``, ``std``), one at a time."""
        for number, name in enumerate(self._chunks):
            with np.load(self.folder / name, allow_pickle=False) as data:
                yield {k: data[k] for k in ("keys", "names", "provenance", "mean", "std")}

    def __repr__(self) -> str:
        return f"CandidateStore({str(self.folder)!r}, candidates={len(self)}, chunks={len(self._chunks)})"
