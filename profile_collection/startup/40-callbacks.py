"""40-callbacks: hook for the live candidate-ranking callback.

The import of ``xas_callbacks.XASRankingCallback`` (torch and the models behind it) is guarded so
that a session for plain XAFS starts without it.  ``enable_ranking(library, **kwargs)`` subscribes one
to the RunEngine (its ranking documents go to the catalog too); ``disable_ranking()`` removes it.
"""

try:
    from xas_callbacks.callback import XASRankingCallback
except ImportError as _exc:  # the ranking engine is optional for plain XAFS
    XASRankingCallback = None
    print(f"40-callbacks: ranking callback not available ({_exc}); plain XAFS only")

ranking_callback = None
_ranking_token = None


def enable_ranking(library=None, **kwargs):
    """Subscribe an ``XASRankingCallback(library, emit=catalog, **kwargs)`` to ``RE``."""
    global ranking_callback, _ranking_token
    if XASRankingCallback is None:
        raise RuntimeError("xas_callbacks.XASRankingCallback is not available in this environment")
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
