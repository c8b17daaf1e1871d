"""Load a trained XANES ensemble and predict spectra of structures, with uncertainty.

>>> from models import load_predictor
>>> pred = load_predictor("o-k")
>>> res = pred.predict(["CCO", "O=C=O"])
>>> res.mean.shape == (2, len(pred.energies))
True

How a structure's spectrum and its uncertainty are formed
---------------------------------------------------------
Every symmetry-distinct absorber site (crystals, weighted by multiplicity) or every absorber atom
(molecules, equal weights) gets its own absorber-centred graph
(:meth:`models.graphs.GraphBuilder.structure_graphs`). For each ensemble member the structure's
mean is the weighted average of the site means, and its std the same weighted average of the
site stds (site errors are treated as fully correlated: they come from one model and one
structure, so they do not average out). The members are then combined as a Gaussian mixture:
``var = mean_m(std_m**2) + var_m(mean_m)`` (aleatoric + epistemic), and the std is multiplied by
the calibration factor fitted on the validation split so that validation z-scores have unit RMS.
This is exactly what the model card's ``test_coverage`` was measured on.
"""

from __future__ import annotations

import hashlib
import json
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import torch

from models.gnn import XASEnsemble, aggregate_sites, combine_members, resolve_device
from models.provenance import file_sha256

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
_LOADED: dict[tuple[str, str], "Predictor"] = {}


class ModelNotFoundError(FileNotFoundError):
    """Neither a shipped model name nor an existing weights file."""


@dataclass
class Prediction:
    """Predicted spectra of several structures on one energy grid.

    Attributes
    ----------
    names : list of str
        One name per structure that succeeded, in input order.
    energies : numpy.ndarray
        ``(E,)`` absolute photon energies, eV.
    mean : numpy.ndarray
        ``(N, E)`` normalised mu, averaged over absorber sites.
    std : numpy.ndarray
        ``(N, E)`` calibrated 1-sigma predictive uncertainty.
    failures : dict
        ``name -> reason`` of structures skipped with ``on_error="skip"``.
    """

    names: list[str]
    energies: np.ndarray
    mean: np.ndarray
    std: np.ndarray
    failures: dict[str, str] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.names)


def available_models() -> list[str]:
    """Names of the shipped models (``models/weights/<name>.pt`` with its ``.json`` card)."""
    return sorted(p.stem for p in WEIGHTS_DIR.glob("*.pt") if p.with_suffix(".json").exists())


def _resolve(name_or_path: str | Path) -> Path:
    text = str(name_or_path)
    candidate = Path(text).expanduser()
    if candidate.suffix == ".pt" or candidate.exists():
        if not candidate.exists():
            raise ModelNotFoundError(f"weights file {candidate} does not exist")
        return candidate
    shipped = WEIGHTS_DIR / f"{text}.pt"
    if shipped.exists():
        return shipped
    raise ModelNotFoundError(
        f"unknown model {text!r}: not a file and not a shipped model; shipped models are "
        f"{available_models() or 'none'} (in {WEIGHTS_DIR})"
    )


def model_card(name_or_path: str | Path) -> dict:
    """The model card (``<weights>.json``) of a shipped model or weights file, without loading it.

    Raises
    ------
    ModelNotFoundError
        Unknown name, missing weights or missing card.
    """
    path = _resolve(name_or_path).with_suffix(".json")
    if not path.exists():
        raise ModelNotFoundError(f"weights {path.with_suffix('.pt')} have no model card {path.name}")
    return json.loads(path.read_text())


def load_predictor(name_or_path: str | Path, device: str = "auto", compile: bool = False) -> "Predictor":
    """Load a shipped model by name (``"cu-k"``, ``"o-k"``, ``"n-k"``) or a ``.pt`` file written by ``xas-train``.

    Parameters
    ----------
    name_or_path : str or Path
        Model name or path to a weights file (its card ``<stem>.json`` is read when present).
    device : {"auto", "cpu", "cuda"}
        ``"auto"`` uses CUDA when available.
    compile : bool
        Compile the fused pass (:meth:`Predictor.compile`); worth it for large libraries only.
    """
    path = _resolve(name_or_path)
    dev = resolve_device(device)
    key = (str(path.resolve()), str(dev))
    sha = file_sha256(path)
    predictor = _LOADED.get(key)
    if predictor is None or predictor.weights_sha256 != sha:
        predictor = Predictor(path, dev, sha)
        _LOADED[key] = predictor
    return predictor.compile() if compile else predictor


class Predictor:
    """A trained ensemble, its graph builder and energy grid.

    Use :func:`load_predictor` rather than the constructor.
    """

    def __init__(self, path: Path, device: torch.device, sha256: str | None = None) -> None:
        from models.graphs import GraphBuilder

        payload = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(payload, dict) or "config" not in payload or "state_dict" not in payload:
            raise ValueError(f"{path} is not a steered-xas weights file (needs 'config' and 'state_dict')")
        cfg = payload["config"]
        self.path = Path(path)
        self.config: dict[str, Any] = cfg
        self.name: str = cfg["name"]
        self.element: str = cfg["element"]
        self.edge: str = cfg["edge"]
        self.kind: str = cfg["kind"]
        self.energies = np.asarray(cfg["energies"], dtype=float)
        self.weights_sha256 = sha256 or file_sha256(path)
        card_path = self.path.with_suffix(".json")
        self.card: dict[str, Any] = json.loads(card_path.read_text()) if card_path.exists() else {}
        self.device = device
        self.builder = GraphBuilder.from_config(cfg["graph_builder"])
        self.ensemble = XASEnsemble(cfg["net"], members=int(cfg["members"]))
        self.ensemble.load_state_dict(payload["state_dict"])
        self.ensemble.to(device).eval()
        from models.fused import fuse

        # all members in one pass (same function, see models.fused / models.fused_painn);
        # None: the per-member path
        fused = fuse(self.ensemble)
        self.fused = fused.to(device).eval() if fused is not None else None
        self._forward_block = self.fused.forward_block if fused is not None else None
        self.compiled = False
        self.supported_elements: list[str] = list(cfg.get("elements") or [])
        self.cache_size = 4096
        self._cache: OrderedDict[tuple[str, str], tuple[np.ndarray, np.ndarray]] = OrderedDict()
        self.network_calls = 0  # graphs passed through the network (tests / benchmarks)

    def __repr__(self) -> str:
        return (f"Predictor(name={self.name!r}, element={self.element!r}, edge={self.edge!r}, "
                f"points={len(self.energies)}, members={len(self.ensemble.members)}, "
                f"device={self.device}, sha256={self.weights_sha256[:12]})")

    def compile(self) -> "Predictor":
        """Run the fused pass through ``torch.compile`` (TorchInductor, dynamic shapes) from now
        on; returns the predictor. The first call compiles (about a minute on a CPU, needs a C++
        compiler; kernels are cached on disk, seconds after that), so it pays off for libraries
        of thousands of candidates. Outputs agree with the eager pass to float32 rounding
        (``tests/test_fused.py``); measured gain in README, "Screening at scale".

        Raises
        ------
        ValueError
            For a model without a fused pass (:func:`models.fused.fuse`).
        """
        if self.fused is None:
            raise ValueError(f"model {self.name!r} has no fused pass to compile "
                             f"({type(self.ensemble.members[0]).__name__} members)")
        if not self.compiled:
            self._forward_block = torch.compile(self.fused.forward_block, dynamic=True)
            self.compiled = True
        return self

    # ---------------------------------------------------------------------------------------
    def structure_key(self, structure) -> str:
        """Content hash of a loaded pymatgen structure (species, lattice, coordinates)."""
        digest = hashlib.sha256()
        digest.update(type(structure).__name__.encode())
        if hasattr(structure, "lattice"):
            digest.update(np.round(structure.lattice.matrix, 6).tobytes())
            coords = np.round(structure.frac_coords % 1.0, 6) % 1.0
        else:
            coords = np.round(structure.cart_coords, 6)
        species = "|".join(str(s.species) for s in structure)
        digest.update(species.encode())
        digest.update(np.ascontiguousarray(coords).tobytes())
        return digest.hexdigest()

    def clear_cache(self) -> None:
        """Forget cached predictions."""
        self._cache.clear()

    def _check_elements(self, structure, label: str) -> None:
        from models.graphs import NoAbsorberError, UnsupportedElementError

        present = sorted({el.symbol for el in structure.composition.elements})
        if self.element not in present:
            raise NoAbsorberError(
                f"{label}: no {self.element} atom to absorb at (elements present: {', '.join(present)}); "
                f"model {self.name!r} predicts the {self.element} {self.edge}-edge"
            )
        if self.supported_elements:
            unknown = [el for el in present if el not in self.supported_elements]
            if unknown:
                raise UnsupportedElementError(
                    f"{label}: element(s) {', '.join(unknown)} not supported by model {self.name!r}; "
                    f"supported elements: {', '.join(self.supported_elements)}"
                )

    @torch.inference_mode()
    def _run(self, graphs: list, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        from torch_geometric.data import Batch

        means, stds = [], []
        for start in range(0, len(graphs), batch_size):
            chunk = graphs[start:start + batch_size]
            batch = Batch.from_data_list(chunk).to(self.device)
            mz, sz = self.ensemble.forward_members(batch)
            m, s = self.ensemble.to_mu(mz, sz)
            means.append(m.float().cpu())
            stds.append(s.float().cpu())
            self.network_calls += len(chunk)
        return torch.cat(means, 1), torch.cat(stds, 1)

    @torch.inference_mode()
    def predict_prepared(self, prepared: Sequence[Any], batch_size: int = 256) -> tuple[np.ndarray, np.ndarray]:
        """Spectra of structures already checked by :func:`models.graph_batch.prepare`.

        All absorber sites of all structures are built at once (:mod:`models.graph_batch`) and run
        through the fused ensemble in blocks of at most ``batch_size`` graphs (of similar size for
        the attention MPNN; of at most ``block_edges`` edges for PaiNN); architectures without a
        fused path (:func:`models.fused.fuse`) go through :meth:`predict`.

        Parameters
        ----------
        prepared : sequence of PreparedStructure
        batch_size : int
            Site graphs per network call.

        Returns
        -------
        mean, std : numpy.ndarray
            ``(len(prepared), E)`` float32, as :meth:`predict` returns them.
        """
        from models.graph_batch import dense_batches, site_arrays, sparse_batches

        n_out = len(self.energies)
        if not prepared:
            return np.zeros((0, n_out), np.float32), np.zeros((0, n_out), np.float32)
        if self.fused is None:  # symmetry functions: the per-member path, same structures
            from pymatgen.core import Molecule

            items = [p.structure if hasattr(p.structure, "cart_coords") else Molecule(p.symbols, p.cart)
                     for p in prepared]
            result = self.predict(items, batch_size=batch_size)
            return (np.asarray(result.mean, np.float32).reshape(len(prepared), -1),
                    np.asarray(result.std, np.float32).reshape(len(prepared), -1))
        arrays = site_arrays(self.builder, prepared)
        n_sites = len(arrays.nodes)
        members = self.fused.members
        mean = torch.empty((members, n_sites, n_out))
        std = torch.empty((members, n_sites, n_out))
        if self.fused.input_kind == "sparse":
            # on a CPU, blocks of a few hundred edges stay in cache; an accelerator wants big blocks
            max_edges = self.fused.block_edges if self.device.type == "cpu" else 1 << 30
            blocks = sparse_batches(self.builder, arrays, max_graphs=batch_size, max_edges=max_edges)
        else:
            blocks = dense_batches(self.builder, arrays, max_graphs=batch_size)
        for block in blocks:
            m, s = self.fused.to_mu(*self._forward_block(block.to(self.device)))
            rows = torch.from_numpy(block.rows)
            mean[:, rows], std[:, rows] = m.float().cpu(), s.float().cpu()
            self.network_calls += len(block.rows)
        groups = np.repeat(np.arange(len(prepared)), [len(p.sites) for p in prepared])
        weights = np.concatenate([p.weights for p in prepared])
        gm, gs = aggregate_sites(mean, std, groups.tolist(), weights.tolist(), len(prepared))
        mu, sd = combine_members(gm, gs, self.fused.calibration.cpu())
        return mu.numpy().astype(np.float32, copy=False), sd.numpy().astype(np.float32, copy=False)

    def predict(
        self,
        structures: Iterable[Any] | Any,
        batch_size: int = 256,
        on_error: str = "raise",
        progress: bool = False,
        names: Sequence[str] | None = None,
    ) -> Prediction:
        """Predict the spectrum of each structure.

        Parameters
        ----------
        structures : iterable or single item
            pymatgen ``Structure``/``Molecule`` objects, file paths (CIF, POSCAR, XYZ, pymatgen
            JSON) or SMILES strings.
        batch_size : int
            Site graphs per network call.
        on_error : {"raise", "skip"}
            ``"skip"`` lists failures in :attr:`Prediction.failures` instead of raising.
        progress : bool
            Show a tqdm bar over structures.
        names : sequence of str, optional
            A unique name per structure, used in :attr:`Prediction.names` and ``failures``
            (default: file stems, SMILES, formulas, made unique with ``#i``).

        Returns
        -------
        Prediction
        """
        from models.graph_batch import prepare
        from models.structures import load_structure, structure_name

        if on_error not in ("raise", "skip"):
            raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if isinstance(structures, (str, Path)) or not isinstance(structures, Iterable) or hasattr(structures, "lattice") or hasattr(structures, "cart_coords"):
            structures = [structures]
        items = list(structures)
        if names is not None:
            names = [str(n) for n in names]
            if len(names) != len(items) or len(set(names)) != len(names):
                raise ValueError(f"names must be {len(items)} unique strings, one per structure")
        given_names = names
        if progress:
            from tqdm.auto import tqdm

            items_iter = tqdm(items, desc=f"{self.name} graphs", mininterval=1.0)
        else:
            items_iter = items

        names: list[str] = []
        keys: list[str] = []
        failures: dict[str, str] = {}
        pending: dict[str, tuple[list, list[float]]] = {}
        used: set[str] = set()
        for i, source in enumerate(items_iter):
            try:
                label = given_names[i] if given_names is not None else structure_name(source)
            except Exception:  # noqa: BLE001 - naming must never hide the real error
                label = f"structure {i}"
            name = label
            if name in used:
                name = f"{label} #{i}"
            try:
                structure = load_structure(source)
                key = self.structure_key(structure)
                cache_key = (key, self.weights_sha256)
                if cache_key in self._cache:
                    self._cache.move_to_end(cache_key)
                elif key not in pending:
                    self._check_elements(structure, label)
                    if self.fused is not None:
                        pending[key] = prepare(self.builder, structure)
                        if not pending[key].sites:
                            raise ValueError(f"{label}: no {self.element} absorber site found")
                    else:
                        graphs, weights = self.builder.structure_graphs(structure)
                        if not graphs:
                            raise ValueError(f"{label}: no {self.element} absorber site found")
                        pending[key] = (graphs, [float(w) for w in weights])
            except Exception as exc:  # noqa: BLE001 - re-raised or reported in failures
                if on_error == "raise":
                    raise
                failures[name] = f"{type(exc).__name__}: {exc}"
                continue
            used.add(name)
            names.append(name)
            keys.append(key)

        if pending and self.fused is not None:
            order = list(pending)
            mu, sd = self.predict_prepared([pending[k] for k in order], batch_size=batch_size)
            for g_i, key in enumerate(order):
                self._cache[(key, self.weights_sha256)] = (mu[g_i].copy(), sd[g_i].copy())
            while len(self._cache) > max(self.cache_size, len(set(keys))):
                self._cache.popitem(last=False)
        elif pending:
            all_graphs, groups, weights = [], [], []
            order = list(pending)
            for g_i, key in enumerate(order):
                graphs, ws = pending[key]
                all_graphs.extend(graphs)
                groups.extend([g_i] * len(graphs))
                weights.extend(ws)
            mean, std = self._run(all_graphs, batch_size)
            gm, gs = aggregate_sites(mean, std, groups, weights, len(order))
            mu, sd = combine_members(gm, gs, self.ensemble.calibration.cpu())
            for g_i, key in enumerate(order):
                self._cache[(key, self.weights_sha256)] = (mu[g_i].numpy().copy(), sd[g_i].numpy().copy())
            while len(self._cache) > max(self.cache_size, len(set(keys))):
                self._cache.popitem(last=False)

        n = len(self.energies)
        mean_out = np.empty((len(keys), n), dtype=np.float32)
        std_out = np.empty((len(keys), n), dtype=np.float32)
        for row, key in enumerate(keys):
            m, s = self._cache[(key, self.weights_sha256)]
            mean_out[row], std_out[row] = m, s
        return Prediction(names, self.energies.copy(), mean_out, std_out, failures)
