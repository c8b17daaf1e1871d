"""mu(E) formation and normalisation, the candidate ranking engine, ``XASRankingCallback`` and
``xas-rank``.

Imports are lazy so that ``import xas_callbacks`` stays cheap in the IPython profile.
"""

from __future__ import annotations

__all__ = [
    "XASRankingCallback",
    "CandidateLibrary",
    "RankingEngine",
    "RankingConfig",
    "RankingResult",
    "ScreeningEngine",
    "LiveRankingPlot",
]

_WHERE = {
    "XASRankingCallback": "xas_callbacks.callback",
    "CandidateLibrary": "xas_callbacks.candidates",
    "RankingEngine": "xas_callbacks.ranking",
    "RankingConfig": "xas_callbacks.ranking",
    "RankingResult": "xas_callbacks.ranking",
    "ScreeningEngine": "xas_callbacks.screening",
    "LiveRankingPlot": "xas_callbacks.plotting",
}


def __getattr__(name):
    if name in _WHERE:
        import importlib

        return getattr(importlib.import_module(_WHERE[name]), name)
    raise AttributeError(f"module 'xas_callbacks' has no attribute {name!r}")
