"""40-callbacks: hook for the live candidate-ranking callback.

The import of ``xas_callbacks.XASRankingCallback`` (torch and the models behind it) is guarded so
that a session for plain XAFS starts without it. ``enable_ranking(candidates, model=...)``
subscribes one to the RunEngine (its ranking documents go to the catalog too);
``disable_ranking()`` removes it. ``candidates`` is what ``adaptive`` accepts (a folder of
structure files, a SMILES file, a FEFF folder, a saved library, a ``CandidateLibrary``), or None to
rank the candidates each run's start document names.
"""

try:
    from xas_callbacks.callback import XASRankingCallback
except ImportError as _exc:  # the ranking engine is optional for plain XAFS
    XASRankingCallback = None
    print(f"40-callbacks: ranking callback not available ({_exc}); plain XAFS only")

ranking_callback = None
_ranking_token = None


def enable_ranking(candidates=None, *, model="cu-k", **kwargs):
    """Subscribe an ``XASRankingCallback`` of ``candidates`` (predicted with ``model``) to ``RE``;
    its ranking documents go to the catalog. Other keywords go to ``XASRankingCallback``."""
    global ranking_callback, _ranking_token
    if XASRankingCallback is None:
        raise RuntimeError("xas_callbacks.XASRankingCallback is not available in this environment")
    from xas_callbacks.candidates import CandidateLibrary

    library = candidates
    if candidates is not None and not isinstance(candidates, CandidateLibrary):
        library = CandidateLibrary.from_source(candidates, model=model)
    disable_ranking()
    kwargs.setdefault("emit", catalog)
    ranking_callback = XASRankingCallback(library, **kwargs)
    _ranking_token = RE.subscribe(ranking_callback)
    return ranking_callback


def disable_ranking():
    """Unsubscribe the ranking callback, if any."""
    global ranking_callback, _ranking_token
    if _ranking_token is not None:
        RE.unsubscribe(_ranking_token)
    ranking_callback = None
    _ranking_token = None
