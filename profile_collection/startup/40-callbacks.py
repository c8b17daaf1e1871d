"""40-callbacks: hook for the live candidate-ranking callback.

The import of ``xas_callbacks.XASRankingCallback`` (torch and the models behind it) is guarded so
that a session for plain XAFS starts without it. ``enable_ranking(candidates, model=...)``
subscribes one to the RunEngine (its ranking documents go to the catalog too, and to a live
ranking plot: a window with a display, a PNG file per run headless, see 00-base);
``disable_ranking()`` removes it. ``candidates`` is what ``adaptive`` accepts (a folder of
structure files, a SMILES file, a FEFF folder, a saved library, a candidate source such as
``"amcsd:Cu"``, a list of structures or SMILES, a ``CandidateLibrary``), or None to rank the candidates each run's start document names.
"""

try:
    from xas_callbacks.callback import XASRankingCallback
except ImportError as _exc:  # the ranking engine is optional for plain XAFS
    XASRankingCallback = None
    print(f"40-callbacks: ranking callback not available ({_exc}); plain XAFS only")

ranking_callback = None
_ranking_token = None


def enable_ranking(candidates=None, *, model="cu-k", plot=None, **kwargs):
    """Subscribe an ``XASRankingCallback`` of ``candidates`` (predicted with ``model``) to ``RE``;
    its ranking documents go to the catalog and, unless ``plot=False`` (or ``XAS_PLOTS=0``), to a
    live ranking plot (``plot``: your own, default ``ranking_plot()``). Other keywords go to
    ``XASRankingCallback``."""
    global ranking_callback, _ranking_token
    if XASRankingCallback is None:
        raise RuntimeError("xas_callbacks.XASRankingCallback is not available in this environment")
    library = None if candidates is None else candidate_library(candidates, model)  # noqa: F821 -- 30-plans
    disable_ranking()
    kwargs.setdefault("emit", catalog)
    if plot is None:
        plot = ranking_plot()
    ranking_callback = XASRankingCallback(library, plot=plot or None, **kwargs)
    _ranking_token = RE.subscribe(ranking_callback)
    return ranking_callback


def disable_ranking():
    """Unsubscribe the ranking callback, if any."""
    global ranking_callback, _ranking_token
    if _ranking_token is not None:
        RE.unsubscribe(_ranking_token)
    ranking_callback = None
    _ranking_token = None
