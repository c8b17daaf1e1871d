"""Candidate sources: many candidate structures named by one short string.

Wherever candidates are accepted (``adaptive_xas_plan``, the profile's ``adaptive`` and
``enable_ranking``, ``xas-rank --candidates``, ``xas-predict``), a string that starts with one of
these schemes names a set of structures instead of a file::

    amcsd:Cu                         every distinct AMCSD structure holding Cu (larixite's database)
    amcsd:Cu,O?count=20&seed=1       20 of those holding Cu and O, minerals in a seeded random order
    amcsd:Cu?minerals=tenorite,cuprite
    amcsd:id=1234                    one AMCSD entry
    qm9:O                            all QM9 molecules containing O (111,322)
    qm9:O?count=2000&seed=0          2,000 of them drawn with a seed
    qm9:formula=C2H6O                by formula;  qm9:smarts=[OX2H]  by a SMARTS pattern
    qm9:index=1234                   one QM9 molecule
    enumerate:CuO?substitute=auto&keep=Cu&strain=0.02&distort=0.05&count=50&seed=0
    enumerate:my.cif?substitute=O:S,Cu:Ag&count=10

Syntax: ``scheme:BODY?key=value&key=value``. BODY is a comma-separated element list (``amcsd``,
``qm9``: structures holding all of them) or the seed structure (``enumerate``: a file or the name
of a shipped example, ``models/examples``); a BODY of ``key=value`` options is allowed too.
Values are URL-unquoted, so a SMARTS ``&`` is written ``%26``.

* ``amcsd``: the entries are grouped by mineral (unnamed synthetic compounds by their formula
  title) and entries ``StructureMatcher`` finds alike are one candidate
  (:func:`models.amcsd.distinct_structures`), named ``<mineral> (AMCSD <id>)``; disordered ones
  (partial occupancies) are kept: candidate libraries approximate them by ordered samples and
  record that (:mod:`models.disorder`). Options: ``minerals``, ``id``, ``count`` (the first ones
  in alphabetical order of the minerals, or in the order shuffled with ``seed``).
* ``qm9``: molecules of the ``qm9pack`` wheel, QM9 geometries, named ``qm9-<index>``, given in QM9
  index order. Options: ``formula``, ``smarts``, ``index``, ``count`` (a random subset: the first
  ``count`` of the matches shuffled with ``seed``, by default the fixed order of the shared QM9
  sets, :data:`models.feff.qm9.QM9_ORDER_SEED`), ``seed``.
* ``enumerate``: candidate 0 is the seed structure as given; candidate ``i`` applies the ``i``-th
  of the substitutions in turn (none first), a random symmetric strain tensor with components
  uniform in ``[-strain, strain]`` and random displacements of every atom, Gaussian with
  ``distort`` Angstrom per direction; each from ``numpy.random.default_rng([seed, i])``, so a
  candidate does not depend on ``count``. ``substitute``: pairs ``old:new`` or ``auto``
  (pymatgen's ``SubstitutionPredictor`` on guessed oxidation states, all with probability
  >= ``threshold``, default 0.01), never for the elements in ``keep``. Named ``<stem>-<i>`` plus
  the substitution. Options: ``count`` (default 20), ``seed`` (default 0), ``index``.

:func:`parse_source` checks a string (``ValueError`` naming the bad part, before anything is
read); :func:`iter_candidates` yields :class:`Candidate` tuples lazily (a few structures in
memory at a time: stream them in chunks with :func:`iter_chunks`); :func:`build_candidates` makes
the list. Each candidate carries ``ref``, a source string giving just it again
(:func:`load_candidate`). Items that cannot be made are never dropped silently: they are logged
and listed in the ``skipped`` dict (candidate libraries put them in ``failures``).
"""

from __future__ import annotations

import itertools
import logging
import random
import re
from dataclasses import dataclass, field, replace
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterator, NamedTuple
from urllib.parse import unquote

import numpy as np

logger = logging.getLogger(__name__)

__all__ = ["Candidate", "CandidateSource", "SCHEMES", "EXAMPLES_DIR", "is_source", "parse_source",
           "iter_candidates", "iter_chunks", "build_candidates", "load_candidate"]

#: Shipped example structures (``enumerate:CuO`` seeds from ``CuO.cif`` here).
EXAMPLES_DIR = Path(__file__).resolve().parent / "examples"

#: Options each scheme takes (the body of ``amcsd`` and ``qm9`` is ``elements``, of ``enumerate`` the seed).
OPTIONS = {
    "amcsd": ("minerals", "id", "count", "seed"),
    "qm9": ("formula", "smarts", "index", "count", "seed"),
    "enumerate": ("substitute", "keep", "threshold", "strain", "distort", "count", "seed", "index"),
}
SCHEMES = tuple(OPTIONS)
QM9_ELEMENTS = ("H", "C", "N", "O", "F")
#: Candidates ``enumerate`` makes without ``count``.
ENUMERATE_COUNT = 20
#: Least substitution probability ``substitute=auto`` keeps without ``threshold``.
SUBSTITUTION_THRESHOLD = 0.01
_SCHEME = re.compile(r"^\s*([a-z0-9]+):")


class Candidate(NamedTuple):
    """One candidate structure of a source.

    Attributes
    ----------
    name : str
        Unique within its source, e.g. ``tenorite (AMCSD 1234)``, ``qm9-17``, ``CuO-003 Cu>Zn``.
    structure : pymatgen Structure or Molecule
        Crystals may be partially occupied (``amcsd``): candidate libraries approximate those.
    provenance : dict
        Where it comes from and what was done to it (``source`` is the scheme).
    ref : str
        A source string that gives this candidate alone (:func:`load_candidate`).
    """

    name: str
    structure: Any
    provenance: dict
    ref: str


@dataclass(frozen=True)
class CandidateSource:
    """A parsed candidate-source string (:func:`parse_source`); iterate with :meth:`candidates`.

    Attributes
    ----------
    scheme : {"amcsd", "qm9", "enumerate"}
    elements : tuple of str
        Elements every candidate holds (``amcsd``, ``qm9``).
    path : str or None
        ``enumerate``: the seed structure, an absolute path or a shipped example's file name.
    minerals, ids : tuple
        ``amcsd``: mineral names or compound titles; AMCSD ids.
    formula, smarts : str or None
        ``qm9``: the molecular formula; a SMARTS pattern.
    index : tuple of int
        ``qm9``: QM9 indices; ``enumerate``: candidate numbers.
    substitute : tuple of (str, str) or "auto"
        ``enumerate``: substitutions ``(old, new)``, or those pymatgen predicts.
    keep : tuple of str
        ``enumerate``: elements never substituted.
    threshold : float or None
        ``enumerate``: least probability of a predicted substitution.
    strain, distort : float
        ``enumerate``: largest strain component; displacement sd in Angstrom.
    count, seed : int or None
        How many candidates; the seed of the draw.
    given : str
        The string as written (not compared).
    """

    scheme: str
    elements: tuple[str, ...] = ()
    path: str | None = None  # enumerate: the seed structure file
    minerals: tuple[str, ...] = ()
    ids: tuple[int, ...] = ()  # amcsd: AMCSD ids
    formula: str | None = None
    smarts: str | None = None
    index: tuple[int, ...] = ()  # qm9: QM9 indices; enumerate: candidate numbers
    substitute: tuple[tuple[str, str], ...] | str = ()  # pairs, or "auto"
    keep: tuple[str, ...] = ()
    threshold: float | None = None
    strain: float = 0.0
    distort: float = 0.0
    count: int | None = None
    seed: int | None = None
    given: str = field(default="", compare=False)  # the string as written

    @property
    def text(self) -> str:
        """The canonical source string (options sorted; ``enumerate`` with the absolute path)."""
        opts = []
        if self.minerals:
            opts.append(("minerals", ",".join(self.minerals)))
        if self.ids:
            opts.append(("id", ",".join(map(str, self.ids))))
        if self.formula:
            opts.append(("formula", self.formula))
        if self.smarts:
            opts.append(("smarts", self.smarts.replace("%", "%25").replace("&", "%26")))
        if self.index:
            opts.append(("index", ",".join(map(str, self.index))))
        if self.substitute:
            opts.append(("substitute", self.substitute if isinstance(self.substitute, str)
                         else ",".join(f"{a}:{b}" for a, b in self.substitute)))
        if self.keep:
            opts.append(("keep", ",".join(self.keep)))
        if self.threshold is not None:
            opts.append(("threshold", f"{self.threshold:g}"))
        if self.strain:
            opts.append(("strain", f"{self.strain:g}"))
        if self.distort:
            opts.append(("distort", f"{self.distort:g}"))
        if self.count is not None:
            opts.append(("count", str(self.count)))
        if self.seed is not None:
            opts.append(("seed", str(self.seed)))
        body = self.path if self.scheme == "enumerate" else ",".join(self.elements)
        query = "&".join(f"{k}={v}" for k, v in sorted(opts))
        if not body:
            return f"{self.scheme}:{query}"
        return f"{self.scheme}:{body}" + (f"?{query}" if query else "")

    def __str__(self) -> str:
        return self.text

    @property
    def required_elements(self) -> frozenset[str] | None:
        """Elements every candidate holds, where the source says (``None``: not known)."""
        if self.scheme == "enumerate" or self.ids or self.index:
            return None
        have = set(self.elements)
        if self.formula:
            from pymatgen.core import Composition

            have |= {el.symbol for el in Composition(self.formula).elements}
        return frozenset(have) if have else None

    def candidates(self, skipped: dict[str, str] | None = None) -> Iterator[Candidate]:
        """The candidates, lazily (see :func:`iter_candidates`)."""
        return iter_candidates(self, skipped=skipped)


# ------------------------------------------------------------------------------------ parsing
def is_source(item: Any) -> bool:
    """Whether ``item`` is a string starting with a candidate-source scheme (``amcsd:`` ...)."""
    if not isinstance(item, str):
        return False
    m = _SCHEME.match(item)
    return bool(m) and m.group(1) in OPTIONS


def parse_source(text: str) -> CandidateSource:
    """Parse a candidate-source string (syntax in :mod:`models.sources`).

    Reads nothing but the seed structure's existence for ``enumerate``.

    Raises
    ------
    ValueError
        Unknown scheme or option, a bad element, number, formula, SMARTS or substitution, or a
        seed structure that does not exist; the message quotes the string and the bad part.
    """
    if isinstance(text, CandidateSource):
        return text
    given = str(text).strip()

    def bad(why: str) -> ValueError:
        return ValueError(f"candidate source {given!r}: {why}")

    scheme, sep, rest = given.partition(":")
    scheme = scheme.strip().lower()
    if not sep or scheme not in OPTIONS:
        raise bad(f"unknown scheme {scheme!r}; use one of {', '.join(s + ':' for s in SCHEMES)}")
    body, _, query = rest.partition("?")
    body = body.strip()
    parts = [p for p in query.split("&") if p.strip()] if query else []
    if scheme != "enumerate" and "=" in body:
        parts = [p for p in body.split("&") if p.strip()] + parts
        body = ""
    options: dict[str, str] = {}
    for part in parts:
        key, eq, value = part.partition("=")
        key = key.strip().lower()
        if not eq or not key:
            raise bad(f"option {part!r} is not key=value")
        if key not in OPTIONS[scheme]:
            raise bad(f"unknown option {key!r}; {scheme}: takes {', '.join(OPTIONS[scheme])}")
        if key in options:
            raise bad(f"option {key!r} given twice")
        options[key] = unquote(value.strip())
    fields: dict[str, Any] = {"scheme": scheme, "given": given}
    if scheme == "enumerate":
        if not body:
            raise bad("give the seed structure: enumerate:<file or example>?...")
        fields["path"] = _seed_path(body, bad)
    elif body:
        fields["elements"] = _elements(body, "elements", bad)
    for key, value in options.items():
        if key == "count":
            fields["count"] = _integer(value, key, bad, least=1)
        elif key == "seed":
            fields["seed"] = _integer(value, key, bad, least=0)
        elif key in ("id", "index"):
            fields["ids" if key == "id" else "index"] = tuple(
                _integer(v, key, bad, least=0) for v in value.split(",") if v.strip())
        elif key == "minerals":
            fields["minerals"] = tuple(m.strip() for m in value.split(",") if m.strip())
        elif key == "keep":
            fields["keep"] = _elements(value, key, bad)
        elif key == "formula":
            fields["formula"] = _formula(value, bad)
        elif key == "smarts":
            fields["smarts"] = _smarts(value, bad)
        elif key == "substitute":
            fields["substitute"] = _substitutions(value, bad)
        else:  # threshold, strain, distort
            limit = {"threshold": 1.0, "strain": 0.3, "distort": 0.5}[key]
            number = _number(value, key, bad)
            if not 0 <= number <= limit or (key == "threshold" and number == 0):
                raise bad(f"{key}={value} is outside {'(0' if key == 'threshold' else '[0'}, {limit:g}]")
            fields[key] = number
    source = CandidateSource(**fields)
    if scheme == "qm9":
        outside = sorted(set(source.elements) - set(QM9_ELEMENTS))
        if outside:
            raise bad(f"QM9 molecules hold only {', '.join(QM9_ELEMENTS)}, not {', '.join(outside)}")
    if scheme == "amcsd" and not (source.elements or source.minerals or source.ids):
        raise bad("give elements (amcsd:Cu), minerals=... or id=...: the whole AMCSD is too much")
    if scheme == "enumerate" and source.substitute == "auto" and source.threshold is None:
        source = replace(source, threshold=SUBSTITUTION_THRESHOLD)
    if scheme == "enumerate" and source.count is None and not source.index:
        source = replace(source, count=ENUMERATE_COUNT)
    return source


def _elements(text: str, key: str, bad) -> tuple[str, ...]:
    from pymatgen.core import Element

    symbols = tuple(s.strip() for s in text.split(",") if s.strip())
    wrong = [s for s in symbols if not Element.is_valid_symbol(s)]
    if wrong or not symbols:
        raise bad(f"{key}: {', '.join(map(repr, wrong)) or 'none given'} {'is' if len(wrong) == 1 else 'are'} "
                  "not element symbols (write e.g. Cu,O)")
    return symbols


def _integer(text: str, key: str, bad, least: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise bad(f"{key}={text!r} is not an integer") from None
    if value < least:
        raise bad(f"{key}={value} must be >= {least}")
    return value


def _number(text: str, key: str, bad) -> float:
    try:
        value = float(text)
    except ValueError:
        raise bad(f"{key}={text!r} is not a number") from None
    if not np.isfinite(value):
        raise bad(f"{key}={text!r} is not finite")
    return value


def _formula(text: str, bad) -> str:
    from pymatgen.core import Composition, Element

    try:
        comp = Composition(text)
        if not all(Element.is_valid_symbol(str(el)) for el in comp):
            raise ValueError(text)
    except Exception:  # noqa: BLE001 -- pymatgen raises ValueError or its own kinds
        raise bad(f"formula={text!r} is not a chemical formula (write e.g. C2H6O)") from None
    if not comp or any(abs(n - round(n)) > 1e-9 for n in comp.values()):
        raise bad(f"formula={text!r} must have whole numbers of atoms")
    return text


def _smarts(text: str, bad) -> str:
    from rdkit import Chem, RDLogger

    RDLogger.DisableLog("rdApp.*")
    try:
        pattern = Chem.MolFromSmarts(text)
    finally:
        RDLogger.EnableLog("rdApp.*")
    if pattern is None:
        raise bad(f"smarts={text!r} is not a valid SMARTS pattern (an '&' in it is written %26)")
    return text


def _substitutions(text: str, bad) -> tuple[tuple[str, str], ...] | str:
    from pymatgen.core import Element

    if text.strip().lower() == "auto":
        return "auto"
    pairs = []
    for part in (p.strip() for p in text.split(",") if p.strip()):
        old, colon, new = part.partition(":")
        if not colon or not Element.is_valid_symbol(old.strip()) or not Element.is_valid_symbol(new.strip()):
            raise bad(f"substitute: {part!r} is not old:new with element symbols (write e.g. O:S,Cu:Ag or auto)")
        pairs.append((old.strip(), new.strip()))
    if not pairs:
        raise bad("substitute: give old:new pairs or auto")
    return tuple(pairs)


def _seed_path(text: str, bad) -> str:
    path = Path(text).expanduser()
    if path.is_file():
        return str(path.resolve())
    if EXAMPLES_DIR.is_dir():
        for example in sorted(EXAMPLES_DIR.iterdir()):
            if example.is_file() and text in (example.name, example.stem) and example.suffix != ".py":
                return example.name
    examples = sorted(p.stem for p in EXAMPLES_DIR.glob("*") if p.suffix != ".py") if EXAMPLES_DIR.is_dir() else []
    raise bad(f"seed structure {text!r} is neither a file nor a shipped example ({', '.join(examples)})")


# ------------------------------------------------------------------------------------ iteration
def iter_candidates(source: str | CandidateSource, *, skipped: dict[str, str] | None = None) -> Iterator[Candidate]:
    """The candidates of ``source``, lazily: a few structures in memory at a time.

    Parameters
    ----------
    source : str or CandidateSource
        A source string (parsed at once, so a bad one raises here) or a parsed source.
    skipped : dict, optional
        Filled with ``name -> reason`` for items that cannot be made (also logged as a warning).

    Yields
    ------
    Candidate

    Raises
    ------
    ValueError
        A bad source string (at the call); a mineral, id or seed structure that cannot be found
        (at the first candidate).
    """
    parsed = parse_source(source)
    return _logged(parsed, skipped if skipped is not None else {})


def _logged(source: CandidateSource, skipped: dict[str, str]) -> Iterator[Candidate]:
    before = set(skipped)
    try:
        yield from {"amcsd": _amcsd, "qm9": _qm9, "enumerate": _enumerate}[source.scheme](source, skipped)
    finally:
        new = [k for k in skipped if k not in before]
        if new:
            shown = "; ".join(f"{k}: {skipped[k]}" for k in new[:10])
            logger.warning("%s: %d item(s) skipped: %s%s", source.text, len(new), shown,
                           f"; and {len(new) - 10} more" if len(new) > 10 else "")


def iter_chunks(source: str | CandidateSource, size: int, *,
                skipped: dict[str, str] | None = None) -> Iterator[list[Candidate]]:
    """:func:`iter_candidates` in lists of at most ``size`` candidates."""
    if size < 1:
        raise ValueError(f"chunk size must be >= 1, got {size}")
    it = iter_candidates(source, skipped=skipped)
    while chunk := list(itertools.islice(it, size)):
        yield chunk


def build_candidates(source: str | CandidateSource) -> tuple[list[Candidate], dict[str, str]]:
    """All candidates of ``source`` as a list, and the skipped items (name -> reason)."""
    skipped: dict[str, str] = {}
    return list(iter_candidates(source, skipped=skipped)), skipped


def load_candidate(ref: str) -> Candidate:
    """The one candidate a ``ref`` (:attr:`Candidate.ref`) names.

    Raises
    ------
    ValueError
        The string is not a source, or it gives no or several candidates.
    """
    skipped: dict[str, str] = {}
    found = list(itertools.islice(iter_candidates(ref, skipped=skipped), 2))
    if len(found) != 1:
        why = f": {'; '.join(f'{k}: {v}' for k, v in skipped.items())}" if skipped else ""
        raise ValueError(f"candidate source {ref!r} gives {len(found) or 'no'} candidates, not one{why}")
    return found[0]


# ------------------------------------------------------------------------------------ amcsd
def _amcsd(source: CandidateSource, skipped: dict[str, str]) -> Iterator[Candidate]:
    from models.amcsd import distinct_structures

    entries = distinct_structures(source.elements, minerals=source.minerals, ids=source.ids, seed=source.seed,
                                  skipped=skipped)
    for entry, structure, duplicates in itertools.islice(entries, source.count):
        name = f"{entry.mineral} (AMCSD {entry.amcsd_id})"
        structure.properties["name"] = name
        yield Candidate(name, structure, {
            "source": "amcsd", "amcsd_id": entry.amcsd_id, "mineral": entry.mineral, "formula": entry.formula,
            "ordered": entry.ordered, "duplicates": duplicates,
        }, f"amcsd:id={entry.amcsd_id}")


# ------------------------------------------------------------------------------------ qm9
def _qm9(source: CandidateSource, skipped: dict[str, str]) -> Iterator[Candidate]:
    from models.feff.qm9 import QM9_ORDER_SEED, QM9DataError, qm9_records

    select = _qm9_selector(source)
    wanted = set(source.index)
    try:
        if source.count is not None:
            matches = list(_qm9_matches(replace(source, count=None, seed=None, given="")))
            random.Random(QM9_ORDER_SEED if source.seed is None else source.seed).shuffle(matches)
            wanted = set(matches[: source.count])
            select = lambda index, smiles, elements: index in wanted  # noqa: E731
        last = max(wanted) if wanted else None
        for molecule in qm9_records(keep=select):
            yield Candidate(molecule.name, molecule.to_molecule(),
                            {"source": "qm9", "qm9_index": molecule.index, "smiles": molecule.smiles},
                            f"qm9:index={molecule.index}")
            wanted.discard(molecule.index)
            if molecule.index == last:
                return  # rows come in index order: the rest of the files need not be read
    except QM9DataError as exc:
        raise ValueError(f"candidate source {source.text!r}: {exc}") from exc
    for index in sorted(wanted):
        skipped[f"qm9-{index}"] = "no QM9 molecule with this index matches"


@lru_cache(maxsize=8)
def _qm9_matches(source: CandidateSource) -> tuple[int, ...]:
    """QM9 indices of the molecules a selection (no count or seed) matches, in index order; kept
    for the session, so another count or seed reads the files once more, not twice."""
    from models.feff.qm9 import qm9_rows

    select = _qm9_selector(source)
    return tuple(index for index, smiles, elements in qm9_rows() if select(index, smiles, elements))


def _qm9_selector(source: CandidateSource):
    from collections import Counter

    need = set(source.elements)
    formula = None
    if source.formula:
        from pymatgen.core import Composition

        formula = Counter({el.symbol: int(round(n)) for el, n in Composition(source.formula).items()})
    pattern = None
    if source.smarts:
        from rdkit import Chem, RDLogger

        pattern = Chem.MolFromSmarts(source.smarts)
        RDLogger.DisableLog("rdApp.*")  # QM9's SMILES of odd charge states print warnings
    index = set(source.index)

    def select(i: int, smiles: str, elements: tuple[str, ...]) -> bool:
        if index and i not in index:
            return False
        if need and not need <= set(elements):
            return False
        if formula is not None and Counter(elements) != formula:
            return False
        if pattern is not None:
            mol = Chem.MolFromSmiles(smiles)
            return mol is not None and mol.HasSubstructMatch(pattern)
        return True

    return select


# ------------------------------------------------------------------------------------ enumerate
def _enumerate(source: CandidateSource, skipped: dict[str, str]) -> Iterator[Candidate]:
    from models.structures import StructureError, load_structure

    path = source.path if Path(source.path).is_absolute() else str(EXAMPLES_DIR / source.path)
    try:
        seed_structure = load_structure(path, allow_disordered=True)
    except (StructureError, OSError) as exc:
        raise ValueError(f"candidate source {source.text!r}: {exc}") from exc
    crystal = hasattr(seed_structure, "lattice")
    if source.strain and not crystal:
        raise ValueError(f"candidate source {source.text!r}: strain needs a crystal, {Path(path).name} is a molecule")
    present = {el.symbol for el in seed_structure.composition.elements}
    if source.substitute == "auto":
        substitutions = _predicted_substitutions(seed_structure, source, present)
    else:
        substitutions = [(old, new, None) for old, new in source.substitute]
        absent = sorted({old for old, _, _ in substitutions} - present)
        if absent:
            raise ValueError(f"candidate source {source.text!r}: the seed structure holds no {', '.join(absent)} "
                             "to substitute")
        kept = sorted({old for old, _, _ in substitutions} & set(source.keep))
        if kept:
            raise ValueError(f"candidate source {source.text!r}: substitutes {', '.join(kept)}, which keep= keeps")
    choices = [None] + substitutions
    stem = Path(path).stem
    seed = 0 if source.seed is None else source.seed
    numbers = source.index or range(source.count)
    floor = _closest(seed_structure)
    for i in numbers:
        substitution = choices[(i - 1) % len(choices)] if i > 0 else None
        name = f"{stem}-{i:03d}" + (f" {substitution[0]}>{substitution[1]}" if substitution else "")
        try:
            structure, applied = _perturbed(seed_structure, i, seed, source, substitution)
        except Exception as exc:  # noqa: BLE001 -- listed, never dropped silently
            skipped[name] = f"cannot be made: {type(exc).__name__}: {exc}"
            continue
        closest = _closest(structure)
        if floor and closest < 0.7 * floor:
            skipped[name] = f"atoms {closest:.2f} A apart after the distortion (seed structure: {floor:.2f} A)"
            continue
        structure.properties["name"] = name
        ref = replace(source, index=(i,), count=None).text
        yield Candidate(name, structure, {"source": "enumerate", "seed_structure": path, "number": i,
                                          "random_seed": seed, **applied}, ref)


def _predicted_substitutions(structure, source: CandidateSource, present: set[str]) -> list[tuple[str, str, float]]:
    """``(old, new, probability)`` from pymatgen's substitution predictor, most probable first."""
    from pymatgen.analysis.structure_prediction.substitution_probability import SubstitutionPredictor

    if not hasattr(structure, "lattice"):
        raise ValueError(f"candidate source {source.text!r}: substitute=auto needs a crystal; "
                         "give pairs, e.g. substitute=O:S")
    try:
        charged = structure.copy()
        charged.add_oxidation_state_by_guess()
        species = [sp for sp in charged.composition if sp.symbol not in source.keep]
        if any(not getattr(sp, "oxi_state", 0) for sp in species):
            raise ValueError("no oxidation states")
    except Exception as exc:  # noqa: BLE001 -- pymatgen's guess fails in several ways
        raise ValueError(f"candidate source {source.text!r}: substitute=auto cannot guess the oxidation states of "
                         f"{structure.composition.reduced_formula} ({exc}); give pairs, e.g. substitute=O:S") from None
    predictor = SubstitutionPredictor(threshold=source.threshold)
    best: dict[tuple[str, str], float] = {}
    for sp in species:
        for prediction in predictor.list_prediction([sp]):
            for new, old in prediction["substitutions"].items():
                if new.symbol != sp.symbol and new.symbol not in present:
                    key = (sp.symbol, new.symbol)
                    best[key] = max(best.get(key, 0.0), float(prediction["probability"]))
    return [(old, new, p) for (old, new), p in sorted(best.items(), key=lambda kv: (-kv[1], kv[0]))]


def _perturbed(seed_structure, i: int, seed: int, source: CandidateSource, substitution) -> tuple[Any, dict]:
    """Candidate ``i``: the substitution, then strain and displacements from ``default_rng([seed, i])``."""
    from pymatgen.core import Lattice, Molecule, Structure

    structure = seed_structure.copy()
    applied: dict[str, Any] = {"substitution": {}, "strain": None, "displacement_rms_A": 0.0}
    if i == 0:
        return structure, applied
    rng = np.random.default_rng([seed, i])
    voigt = rng.uniform(-1.0, 1.0, 6) * source.strain
    displacement = rng.normal(0.0, 1.0, (len(structure), 3)) * source.distort
    if substitution:
        old, new, probability = substitution
        structure.replace_species({old: new})
        applied["substitution"] = {old: new}
        if probability is not None:
            applied["substitution_probability"] = round(probability, 5)
    species = [site.species for site in structure]
    if hasattr(structure, "lattice"):
        strain = np.array([[voigt[0], voigt[5], voigt[4]], [voigt[5], voigt[1], voigt[3]],
                           [voigt[4], voigt[3], voigt[2]]])
        lattice = Lattice(structure.lattice.matrix @ (np.eye(3) + strain))
        cart = lattice.get_cartesian_coords(structure.frac_coords) + displacement
        structure = Structure(lattice, species, cart, coords_are_cartesian=True, to_unit_cell=True)
        applied["strain"] = np.round(strain, 5).tolist()
    else:
        structure = Molecule(species, structure.cart_coords + displacement, charge=seed_structure.charge)
    applied["displacement_rms_A"] = round(float(np.sqrt((displacement ** 2).sum(axis=1).mean())), 4)
    return structure, applied


def _closest(structure) -> float:
    """The shortest distance between two atoms (0 for a single atom)."""
    if len(structure) < 2 and not hasattr(structure, "lattice"):
        return 0.0
    d = np.array(structure.distance_matrix, dtype=float)
    if hasattr(structure, "lattice") and len(structure) == 1:
        return float(min(structure.lattice.abc))
    d[np.diag_indices_from(d)] = np.inf
    return float(d.min())
