"""Candidate libraries: the predicted (or computed) spectra of the structures to rank.

A :class:`CandidateLibrary` holds ``names``, ``energies`` (E,), ``mean`` (N, E), ``std`` (N, E),
``failures`` (name -> reason: candidates the model could not handle are listed, never silently
dropped), ``provenance`` (model name, weights sha256, candidate-set sha256 computed from the
file contents / SMILES strings) and ``sources``: where each candidate's structure comes from (a
file path, a SMILES string, the material's ``POSCAR`` in a FEFF folder, or a pymatgen dict), so
that a ranked candidate can be computed again, e.g. with FEFF (``xas-rank --verify-top``).
Libraries saved before sources were kept load with ``sources`` all ``None``.

Sources:

* structures through the predictor -- a folder of CIF/POSCAR/XYZ/pymatgen-JSON files, a list
  of paths or SMILES, a ``.smi``/``.txt`` file of SMILES: :meth:`CandidateLibrary.from_structures`
  (batched, ``on_error="skip"``, cached on disk as ``.npz`` under
  ``models.paths.user_data_dir()/candidates`` keyed by the sha256s);
* computed spectra arrays: :meth:`CandidateLibrary.from_spectra`;
* a FEFF materials folder (``<id>/FEFF-XANES/NNN_Cu/xmu.dat``): :meth:`CandidateLibrary.from_feff`;
* a candidate-source string (``amcsd:Cu``, ``qm9:O?count=2000&seed=0``, ``enumerate:CuO?...``,
  :mod:`models.sources`), alone or among the items of :meth:`CandidateLibrary.from_structures`:
  its candidates are named by the source, their provenance is kept in ``provenance["candidates"]``,
  the items it could not make are in ``failures``, and each candidate's ``sources`` entry is a
  source string giving it alone.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from models.provenance import software_version

logger = logging.getLogger(__name__)

__all__ = ["CandidateLibrary", "candidate_set_sha256", "STRUCTURE_SUFFIXES", "read_xmu_file"]

STRUCTURE_SUFFIXES = (".cif", ".vasp", ".poscar", ".xyz", ".json", ".mol", ".sdf")
_SITE_DIR = re.compile(r"^(\d+)_([A-Z][a-z]?)$")
CACHE_VERSION = 3  # 3: disordered crystals averaged over ordered samples


def candidate_set_sha256(items: Sequence) -> str:
    """sha256 over a candidate set: file contents for paths (in the given order, with their
    names), the string itself for SMILES, species, coordinates, lattice and charge for pymatgen
    structures and molecules."""
    digest = hashlib.sha256()
    for item in items:
        p = Path(str(item))
        if isinstance(item, (str, os.PathLike)) and p.is_file():
            digest.update(p.name.encode() + b"\0")
            digest.update(p.read_bytes())
        elif hasattr(item, "cart_coords"):
            digest.update(_structure_bytes(item))
        else:
            digest.update(str(item).encode())
        digest.update(b"\0\1")
    return digest.hexdigest()


def _structure_bytes(structure) -> bytes:
    """The content of a pymatgen structure or molecule the spectrum depends on, as bytes."""
    species = "|".join(str(site.species) for site in structure)
    parts = [type(structure).__name__.encode(), species.encode(),
             np.round(np.asarray(structure.cart_coords, dtype=float), 6).tobytes(),
             str(getattr(structure, "charge", 0)).encode()]
    if hasattr(structure, "lattice"):
        parts.append(np.round(structure.lattice.matrix, 6).tobytes())
    return b"\0".join(parts)


def _name_of(item) -> str:
    p = Path(str(item))
    if isinstance(item, (str, os.PathLike)) and p.exists():
        return p.stem if p.name.upper() not in ("POSCAR", "CONTCAR") else p.parent.name
    if hasattr(item, "properties") and isinstance(getattr(item, "properties"), dict):
        if "name" in item.properties:
            return str(item.properties["name"])
    if hasattr(item, "composition"):
        return item.composition.reduced_formula
    return str(item)


def read_xmu_file(path) -> tuple[np.ndarray, np.ndarray]:
    """(omega, mu) columns of a FEFF ``xmu.dat``."""
    data = np.loadtxt(path, comments="#", usecols=(0, 3), ndmin=2)
    return data[:, 0], data[:, 1]


@dataclass
class CandidateLibrary:
    """Spectra of candidate structures on one energy grid.

    Attributes
    ----------
    names : list of str
    energies : ndarray, shape (E,)
        Absolute photon energies (eV), increasing.
    mean, std : ndarray, shape (N, E)
        Normalised spectra and their 1-sigma.
    failures : dict
        name -> reason for candidates without a spectrum.
    provenance : dict
        ``model``, ``weights_sha256``, ``candidates_sha256``, ``source``, ``software_version``.
    sources : list, optional
        One per name: where the candidate's structure comes from -- an absolute file path
        (CIF, POSCAR, XYZ, pymatgen JSON; for FEFF folders the material's ``POSCAR``), a SMILES
        string, a candidate-source string naming it alone (``amcsd:id=1234``, ``qm9:index=17``,
        :mod:`models.sources`), a pymatgen ``as_dict()`` of an in-memory structure, or ``None`` when unknown
        (libraries built from bare spectra, or saved before sources were kept). Read a
        structure back with :meth:`structure_of`.
    """

    names: list[str]
    energies: np.ndarray
    mean: np.ndarray
    std: np.ndarray
    failures: dict[str, str] = field(default_factory=dict)
    provenance: dict = field(default_factory=dict)
    sources: list | None = None

    def __post_init__(self) -> None:
        self.names = [str(n) for n in self.names]
        self.energies = np.asarray(self.energies, dtype=float)
        self.mean = np.atleast_2d(np.asarray(self.mean, dtype=float))
        self.std = np.atleast_2d(np.asarray(self.std, dtype=float))
        if self.mean.shape != (len(self.names), self.energies.size) or self.std.shape != self.mean.shape:
            raise ValueError(
                f"inconsistent library: {len(self.names)} names, energies {self.energies.shape}, "
                f"mean {self.mean.shape}, std {self.std.shape}"
            )
        if self.sources is None:
            self.sources = [None] * len(self.names)
        self.sources = list(self.sources)
        if len(self.sources) != len(self.names):
            raise ValueError(
                f"inconsistent library: {len(self.names)} names but {len(self.sources)} sources"
            )
        self.provenance = {
            "model": None,
            "weights_sha256": None,
            "candidates_sha256": None,
            "source": None,
            "software_version": software_version(),
            **dict(self.provenance),
        }

    def __len__(self) -> int:
        return len(self.names)

    @property
    def absorber(self) -> str | None:
        """The absorbing element the spectra are for, where the library says (``None`` if not)."""
        return self.provenance.get("element") or self.provenance.get("absorber")

    def check_absorber(self, element: str, edge: str) -> None:
        """Raise ``ValueError`` when the library's spectra are for another element or edge."""
        absorber, own_edge = self.absorber, self.provenance.get("edge")
        if absorber is not None and str(absorber) != str(element):
            raise ValueError(f"the candidates are {absorber} spectra ({self.provenance.get('source') or 'library'}), "
                             f"not {element}: choose candidates and a model for the {element} {edge}-edge")
        if own_edge is not None and str(own_edge).upper() != str(edge).upper():
            raise ValueError(f"the candidates are {own_edge}-edge spectra, not {edge}-edge")

    # ---------------------------------------------------------------- structures
    def source_of(self, name: str):
        """The structure source of candidate ``name`` (path, SMILES, pymatgen dict) or ``None``.

        Raises
        ------
        KeyError
            ``name`` is not a candidate of this library.
        """
        try:
            return self.sources[self.names.index(name)]
        except ValueError:
            raise KeyError(f"{name!r} is not a candidate of this library") from None

    def structure_of(self, name: str):
        """The pymatgen ``Structure``/``Molecule`` of candidate ``name``, read from its source.

        SMILES are embedded with the same fixed seed as for the prediction
        (:func:`models.structures.load_structure`), so the geometry is the one the model saw.

        Raises
        ------
        KeyError
            Unknown candidate.
        ValueError
            The library holds no structure source for it (message says why), or the source
            cannot be read (``models.structures.StructureError``, naming file or SMILES).
        """
        src = self.source_of(name)
        if src is None:
            raise ValueError(
                f"candidate {name!r} has no structure source: the library was built from bare "
                "spectra or saved before structure sources were kept; rebuild it from the "
                "structure files / SMILES / FEFF folder"
            )
        if isinstance(src, dict):
            from pymatgen.core import Molecule, Structure

            cls = Structure if src.get("@class") == "Structure" else Molecule
            try:
                return cls.from_dict(src)
            except Exception as exc:  # noqa: BLE001 -- name the candidate
                raise ValueError(f"candidate {name!r}: stored pymatgen structure unreadable: {exc}") from exc
        from models.sources import is_source, load_candidate

        if is_source(src):
            return load_candidate(src).structure
        from models.structures import load_structure

        return load_structure(str(src))

    # ---------------------------------------------------------------- builders
    @classmethod
    def from_spectra(
        cls,
        names: Sequence[str],
        energies,
        mean,
        std=None,
        *,
        default_std: float = 0.0,
        failures: dict | None = None,
        provenance: dict | None = None,
        sources: Sequence | None = None,
    ) -> "CandidateLibrary":
        """A library from computed spectra arrays (FEFF references, tests).

        ``std`` None: a constant ``default_std``. The candidate-set sha256 is computed from the
        names and array bytes. ``sources``: optional structure source per name (see
        :class:`CandidateLibrary`); without it the candidates cannot be recomputed.
        """
        mean = np.atleast_2d(np.asarray(mean, dtype=float))
        std = np.full_like(mean, float(default_std)) if std is None else np.asarray(std, dtype=float)
        energies = np.asarray(energies, dtype=float)
        digest = hashlib.sha256()
        for n in names:
            digest.update(str(n).encode() + b"\0")
        digest.update(np.ascontiguousarray(energies).tobytes())
        digest.update(np.ascontiguousarray(mean).tobytes())
        prov = {"model": "computed-spectra", "candidates_sha256": digest.hexdigest()}
        prov.update(provenance or {})
        return cls(list(names), energies, mean, std, dict(failures or {}), prov,
                   list(sources) if sources is not None else None)

    @classmethod
    def from_feff(
        cls,
        folder,
        ids: Sequence[str] | None = None,
        *,
        absorber: str = "Cu",
        step: float = 0.5,
        default_std: float = 0.0,
        weights: str = "multiplicity",
        cache: bool = True,
    ) -> "CandidateLibrary":
        """Material spectra from a FEFF materials folder (``<id>/FEFF-XANES/NNN_<absorber>``).

        Each material's spectrum is the average over its symmetry-distinct absorber sites,
        weighted by multiplicity (pymatgen symmetry of ``<id>/POSCAR``; equal weights where that
        fails, noted in provenance) or equally (``weights="equal"``). All spectra are resampled
        onto one grid of ``step`` eV spanning the median energy range (spectra are extended
        with their end values where they fall short, a few eV at most). Materials
        without usable spectra are listed in ``failures``.
        """
        folder = Path(folder)
        if ids is None:
            ids = sorted(e.name for e in os.scandir(folder) if e.is_dir())
        ids = [str(i) for i in ids]
        digest = hashlib.sha256(f"feff|v{CACHE_VERSION}|{absorber}|{step}|{weights}|{default_std}".encode())
        site_files: dict[str, list[tuple[int, Path]]] = {}
        failures: dict[str, str] = {}
        for mid in ids:
            xanes = folder / mid / "FEFF-XANES"
            sites = []
            if xanes.is_dir():
                for entry in sorted(os.scandir(xanes), key=lambda e: e.name):
                    m = _SITE_DIR.match(entry.name)
                    if m and m.group(2) == absorber and (Path(entry.path) / "xmu.dat").is_file():
                        sites.append((int(m.group(1)), Path(entry.path) / "xmu.dat"))
            if not sites:
                failures[mid] = f"no FEFF-XANES/NNN_{absorber}/xmu.dat"
                continue
            site_files[mid] = sites
            for _, p in sites:
                st = p.stat()
                digest.update(f"{mid}/{p.parent.name}:{st.st_size}:{int(st.st_mtime)}".encode())
        key = digest.hexdigest()
        cache_file = _cache_dir() / f"feff-{key[:32]}.npz"
        if cache and cache_file.exists():
            lib = cls.load(cache_file)
            lib.failures.update(failures)
            lib.sources = [_feff_poscar(folder, m) for m in lib.names]  # where the folder is now
            lib.provenance.setdefault("absorber", absorber)
            return lib
        spectra: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        weight_note = {}
        for mid, sites in site_files.items():
            try:
                curves = [read_xmu_file(p) for _, p in sites]
                for e, mu in curves:
                    if e.size < 10 or not np.all(np.isfinite(mu)) or np.any(np.diff(e) <= 0):
                        raise ValueError("malformed xmu.dat (too short, NaN or non-increasing)")
                w = _site_weights(folder / mid / "POSCAR", [i for i, _ in sites], absorber) \
                    if weights == "multiplicity" and len(sites) > 1 else None
                if w is None:
                    w = np.full(len(sites), 1.0 / len(sites))
                    if len(sites) > 1 and weights == "multiplicity":
                        weight_note[mid] = "equal site weights (symmetry analysis failed)"
                lo = max(e[0] for e, _ in curves)
                hi = min(e[-1] for e, _ in curves)
                grid = curves[0][0][(curves[0][0] >= lo) & (curves[0][0] <= hi)]
                mu = sum(wi * np.interp(grid, e, m) for wi, (e, m) in zip(w, curves))
                spectra[mid] = (grid, mu)
            except Exception as exc:  # noqa: BLE001 -- listed, not dropped silently
                failures[mid] = f"unreadable FEFF spectrum: {exc}"
        if not spectra:
            raise ValueError(f"no usable FEFF spectra under {folder}")
        # common grid: the median range; the few spectra that start later or stop earlier are
        # extended with their end values (a few eV at most, in the flat pre-edge / far tail)
        lo = float(np.median([g[0] for g, _ in spectra.values()]))
        hi = float(np.median([g[-1] for g, _ in spectra.values()]))
        grid = np.arange(np.ceil(lo / step) * step, hi + 1e-9, step)
        names = [m for m in ids if m in spectra]
        mean = np.array([np.interp(grid, *spectra[m]) for m in names])
        lib = cls.from_spectra(
            names, grid, mean, default_std=default_std, failures=failures,
            provenance={"model": "feff9-computed", "candidates_sha256": key, "source": str(folder),
                        "site_weights": weights, "weight_notes": weight_note, "absorber": absorber},
            sources=[_feff_poscar(folder, m) for m in names],
        )
        if cache:
            lib.save(cache_file)
        return lib

    @classmethod
    def from_structures(
        cls,
        items: Iterable,
        model: str = "cu-k",
        *,
        names: Sequence[str] | None = None,
        batch_size: int = 256,
        cache: bool = True,
        source: str | None = None,
    ) -> "CandidateLibrary":
        """Predict the spectra of structures with ``models.load_predictor(model)``.

        Parameters
        ----------
        items : iterable
            Paths (CIF, POSCAR, XYZ, pymatgen JSON), SMILES strings, pymatgen objects or
            candidate-source strings (``amcsd:Cu``, ``qm9:O?count=100``, :mod:`models.sources`),
            each of which stands for its candidates.
        model : str or Predictor
            Predictor name or weights path (or a loaded ``models.predictor.Predictor``).
        names : list of str, optional
            Candidate names (default: file stems, SMILES strings, formulas; the names a source
            gives). Not with candidate sources.
        batch_size : int
            Passed to ``predict``.
        cache : bool
            Read/write ``user_data_dir()/candidates/<sha>.npz`` keyed by the weights and the
            candidate-set sha256.

        Raises
        ------
        ValueError
            A bad candidate-source string (before the model is loaded), names given with
            sources, or a source whose candidates need not hold the model's absorber.
        """
        from models import load_predictor
        from models.sources import QM9_ELEMENTS, is_source, parse_source

        items = list(items)
        sources = [parse_source(i) for i in items if is_source(i)]  # bad strings refused first
        if sources and names is not None:
            raise ValueError("names cannot be given with candidate sources: the sources name their candidates")
        if sources and model is None:
            raise ValueError(f"candidate source {sources[0].text!r} needs a model to predict its spectra "
                             "(e.g. model='cu-k', 'o-k' or 'n-k')")
        pred = model if hasattr(model, "predict") else load_predictor(model)
        element = getattr(pred, "element", None)
        for src in sources:
            need = src.required_elements
            if element and src.scheme == "qm9" and element not in QM9_ELEMENTS:
                raise ValueError(f"candidate source {src.text!r}: QM9 molecules hold no {element}, the absorber of "
                                 f"model {pred.name!r}; use a model for {', '.join(QM9_ELEMENTS)}")
            if element and need is not None and element not in need:
                raise ValueError(f"candidate source {src.text!r}: its structures need not hold {element}, the "
                                 f"absorber of model {pred.name!r}; add it, e.g. {src.scheme}:"
                                 f"{','.join(sorted(need | {element}))}")
        items, refs, notes, skipped = _expand_sources(items)
        if names is None:
            names = [note["name"] if note else _name_of(i) for i, note in zip(items, notes)]
        names = _dedupe([str(n) for n in names])
        source_by_name = {n: ref if ref is not None else _source_of(i) for n, i, ref in zip(names, items, refs)}
        cand_sha = candidate_set_sha256(items) if all(
            isinstance(i, (str, os.PathLike)) or hasattr(i, "cart_coords") for i in items) else None
        key = None
        if cache and cand_sha is not None:
            key = hashlib.sha256(
                f"{CACHE_VERSION}|{pred.weights_sha256}|{cand_sha}|{'|'.join(names)}".encode()
            ).hexdigest()
            cache_file = _cache_dir() / f"{key[:32]}.npz"
            if cache_file.exists():
                lib = cls.load(cache_file)
                if all(s is None for s in lib.sources):  # cached before sources were kept
                    lib.sources = [source_by_name.get(n) for n in lib.names]
                lib.failures.update(skipped)
                return lib
        flat, owner, disorder = _expand_disordered(items, names)
        res = pred.predict(flat, batch_size=batch_size, on_error="skip",
                           names=[f"{name} [{k}]" for k, name in enumerate(owner)])
        predicted = dict(zip(res.names, range(len(res.names))))
        failures: dict[str, str] = dict(skipped)
        out_names, mean, std = [], [], []
        for name in names:
            rows = [predicted.get(f"{n} [{k}]") for k, n in enumerate(owner) if n == name]
            if rows and all(r is not None for r in rows):
                out_names.append(name)
                mean.append(res.mean[rows].mean(axis=0))
                std.append(res.std[rows].mean(axis=0))  # errors of one model: fully correlated
                continue
            reasons = [res.failures.get(f"{n} [{k}]") for k, n in enumerate(owner) if n == name]
            failures[name] = disorder.get(name, {}).get("error") or next(
                (r for r in reasons if r), "no prediction returned")
        mean = np.array(mean) if mean else np.zeros((0, res.energies.size))
        std = np.array(std) if std else np.zeros((0, res.energies.size))
        if disorder:
            approximated = {n: d for n, d in disorder.items() if "error" not in d}
            if approximated:
                logger.warning("%d disordered candidate(s) approximated by ordered samples: %s",
                               len(approximated), ", ".join(approximated))
        lib = cls(out_names, res.energies, mean, std, failures, {
            "model": pred.name, "weights_sha256": pred.weights_sha256,
            "candidates_sha256": cand_sha, "source": source,
            "element": getattr(pred, "element", None), "edge": getattr(pred, "edge", None),
            "disorder": {n: d for n, d in disorder.items() if "error" not in d},
            **({"candidate_sources": [src.text for src in sources],
                "candidates": {n: note["provenance"] for n, note in zip(names, notes) if note}} if sources else {}),
        }, [source_by_name[n] for n in out_names])
        if key is not None:
            lib.save(_cache_dir() / f"{key[:32]}.npz")
        return lib

    @classmethod
    def from_source(cls, source, model: str | None = "cu-k", **kwargs) -> "CandidateLibrary":
        """Build from a path: a FEFF materials folder (computed spectra, no model needed), a
        folder of structure files, a ``.smi``/``.txt`` file of SMILES (one a line), one
        structure file, or a saved library ``.npz``; or from a candidate-source string
        (``amcsd:Cu``, ``qm9:O?count=2000``, ``enumerate:CuO?...``, :mod:`models.sources`)."""
        from models.sources import is_source, parse_source

        if is_source(source):
            text = parse_source(source).text
            return cls.from_structures([text], model=model, source=text, **kwargs)
        path = Path(source).expanduser()
        if path.suffix == ".npz" and path.is_file():
            lib = cls.load(path)
            # The source a start document records must be loadable again: this file. Where its
            # candidates came from first stays in the provenance.
            lib.provenance["built_from"] = lib.provenance.get("source")
            lib.provenance["source"] = str(path.resolve())
            return lib
        if path.is_dir():
            subdirs = [e for e in os.scandir(path) if e.is_dir()]
            if subdirs and any((Path(e.path) / "FEFF-XANES").is_dir() for e in subdirs[:50]):
                return cls.from_feff(path, **kwargs)
            files = sorted(p for p in path.iterdir()
                           if p.is_file() and (p.suffix.lower() in STRUCTURE_SUFFIXES
                                               or p.name.upper() in ("POSCAR", "CONTCAR")))
            if not files:
                raise ValueError(f"{path}: no structure files ({', '.join(STRUCTURE_SUFFIXES)})")
            return cls.from_structures([str(f) for f in files], model=model, source=str(path), **kwargs)
        if path.is_file() and path.suffix.lower() in (".smi", ".txt"):
            smiles = [ln.split()[0] for ln in path.read_text().splitlines()
                      if ln.strip() and not ln.startswith("#")]
            return cls.from_structures(smiles, model=model, source=str(path), **kwargs)
        if path.is_file():
            return cls.from_structures([str(path)], model=model, source=str(path), **kwargs)
        raise FileNotFoundError(f"candidate source {source} does not exist")

    @classmethod
    def from_start_doc(cls, xas: dict) -> "CandidateLibrary":
        """Build from the ``xas`` block of a start document (``candidates``, ``model``)."""
        cands = xas.get("candidates") or {}
        model = (xas.get("model") or {}).get("name")
        src = cands.get("source")
        if not src:
            raise ValueError("start document xas.candidates has no 'source'")
        lib = cls.from_source(src, model=model) if model else cls.from_source(src)
        want = cands.get("sha256")
        if want and lib.provenance.get("candidates_sha256") not in (None, want):
            logger.warning("candidate set sha256 %s differs from the start document's %s",
                           lib.provenance.get("candidates_sha256"), want)
            lib.provenance["sha256_mismatch"] = want
        wsha = (xas.get("model") or {}).get("weights_sha256")
        if wsha and lib.provenance.get("weights_sha256") not in (None, wsha):
            logger.warning("model weights sha256 %s differs from the start document's %s",
                           lib.provenance.get("weights_sha256"), wsha)
            lib.provenance["weights_sha256_mismatch"] = wsha
        return lib

    # ---------------------------------------------------------------- helpers
    def subset(self, names: Sequence[str]) -> "CandidateLibrary":
        """The candidates named, in that order (unknown names go to failures)."""
        index = {n: i for i, n in enumerate(self.names)}
        keep = [n for n in names if n in index]
        wanted = set(names)
        fail = {n: r for n, r in self.failures.items() if n in wanted}
        fail.update({n: "not in library" for n in names if n not in index})
        rows = [index[n] for n in keep]
        return CandidateLibrary(keep, self.energies, self.mean[rows], self.std[rows], fail,
                                dict(self.provenance), [self.sources[i] for i in rows])

    def save(self, path) -> Path:
        """Write an ``.npz`` (no pickle)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp.npz")
        np.savez_compressed(
            tmp, names=np.array(self.names, dtype=str), energies=self.energies, mean=self.mean,
            std=self.std, failures=np.array(json.dumps(self.failures)),
            provenance=np.array(json.dumps(self.provenance, default=str)),
            sources=np.array(json.dumps(self.sources, default=str)),
        )
        os.replace(tmp, path)
        return path

    @classmethod
    def load(cls, path) -> "CandidateLibrary":
        """Read an ``.npz`` written by :meth:`save`.

        Files written before structure sources were kept (no ``sources`` entry) load with
        ``sources`` all ``None``.
        """
        with np.load(path, allow_pickle=False) as z:
            sources = json.loads(str(z["sources"])) if "sources" in z.files else None
            return cls([str(n) for n in z["names"]], z["energies"], z["mean"], z["std"],
                       json.loads(str(z["failures"])), json.loads(str(z["provenance"])), sources)


def _expand_sources(items: list) -> tuple[list, list, list, dict[str, str]]:
    """``items`` with each candidate-source string replaced by its candidates (structures), and
    per item: its ref (a source string, or None), ``{"name", "provenance"}`` (or None), plus the
    items the sources skipped (name -> reason)."""
    from models.sources import is_source, iter_candidates

    out, refs, notes, skipped = [], [], [], {}
    for item in items:
        if not is_source(item):
            out.append(item)
            refs.append(None)
            notes.append(None)
            continue
        for candidate in iter_candidates(item, skipped=skipped):
            out.append(candidate.structure)
            refs.append(candidate.ref)
            notes.append({"name": candidate.name, "provenance": candidate.provenance})
    return out, refs, notes, skipped


def _expand_disordered(items: list, names: list[str]) -> tuple[list, list[str], dict]:
    """The items for the predictor, each disordered crystal replaced by its ordered samples
    (:func:`models.disorder.ordered_samples`), the candidate each flat item belongs to, and a
    note per disordered candidate (or its ``error``)."""
    from models.disorder import ordered_samples
    from models.structures import StructureError, load_structure

    flat, owner, notes = [], [], {}
    for item, name in zip(items, names):
        samples = [item]
        if _may_be_disordered(item):
            try:
                structure = load_structure(item, allow_disordered=True)
                if hasattr(structure, "lattice") and not structure.is_ordered:
                    samples, notes[name] = ordered_samples(structure, seed=_stable_seed(name))
            except (StructureError, OSError):
                pass  # the predictor reports it with the others
            except Exception as exc:  # noqa: BLE001 -- listed as this candidate's failure, never dropped
                notes[name] = {"error": f"disordered structure could not be sampled: {type(exc).__name__}: {exc}"}
        flat.extend(samples)
        owner.extend([name] * len(samples))
    return flat, owner, notes


def _may_be_disordered(item) -> bool:
    """Crystals given as CIF/JSON files or Structure objects (POSCAR, XYZ and SMILES are ordered)."""
    if hasattr(item, "lattice"):
        return True
    return isinstance(item, (str, os.PathLike)) and Path(str(item)).suffix.lower() in (".cif", ".mcif", ".json")


def _stable_seed(name: str) -> int:
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:4], "little")


def _source_of(item):
    """What :attr:`CandidateLibrary.sources` keeps for one input item: an existing file as its
    absolute path, another string (SMILES) as given, a pymatgen object as its ``as_dict()``."""
    if isinstance(item, (str, os.PathLike)):
        p = Path(str(item)).expanduser()
        return str(p.resolve()) if p.is_file() else str(item)
    if hasattr(item, "to_json"):
        try:
            return json.loads(item.to_json())
        except Exception:  # noqa: BLE001 -- not serialisable: no source, said at verification
            return None
    return None


def _feff_poscar(folder: Path, material_id: str) -> str | None:
    """The material's ``POSCAR`` in a FEFF materials folder (absolute), or None."""
    p = Path(folder) / material_id / "POSCAR"
    return str(p.resolve()) if p.is_file() else None


def _dedupe(names: list[str]) -> list[str]:
    seen: dict[str, int] = {}
    out = []
    for n in names:
        if n in seen:
            seen[n] += 1
            out.append(f"{n}#{seen[n]}")
        else:
            seen[n] = 0
            out.append(n)
    return out


def _cache_dir() -> Path:
    from models.paths import user_data_dir

    d = user_data_dir() / "candidates"
    d.mkdir(parents=True, exist_ok=True)
    return d


def _site_weights(poscar: Path, site_indices: list[int], absorber: str):
    """Multiplicity weights of the given symmetry-distinct sites, or None."""
    try:
        from pymatgen.core import Structure
        from pymatgen.symmetry.analyzer import SpacegroupAnalyzer

        s = Structure.from_file(str(poscar))
        for symprec in (0.01, 0.1):
            try:
                sym = SpacegroupAnalyzer(s, symprec=symprec).get_symmetrized_structure()
            except Exception:  # noqa: BLE001
                continue
            mult = []
            for i in site_indices:
                group = next((g for g in sym.equivalent_indices if i in g), None)
                if group is None:
                    break
                mult.append(len(group))
            n_abs = sum(1 for site in s if site.specie.symbol == absorber)
            if len(mult) == len(site_indices) and sum(mult) == n_abs:
                m = np.asarray(mult, dtype=float)
                return m / m.sum()
    except Exception:  # noqa: BLE001
        return None
    return None
