"""Ground truth on demand: FEFF10 (feff10-rs) spectra for molecules and crystals.

* :mod:`models.feff.inputs`: ``feff10.FeffInput`` for a molecule's absorber atoms or a crystal's
  symmetry-distinct absorber sites (cards of the shared sets).
* :mod:`models.feff.runner`: one site (:func:`~models.feff.runner.run_site`), resumable parallel
  batches (:func:`~models.feff.runner.run_batch`, local processes or a Dask cluster) and
  in-memory spectra (:func:`~models.feff.runner.compute_spectra`).
* :mod:`models.feff.qm9`: QM9 molecules in the fixed order of the shared QM9 sets.
* :mod:`apps.feff`: the ``xas-feff`` command.

Needs the ``feff`` extra (``feff10-rs``, ``dask[distributed]``); QM9 needs the ``qm9`` extra.
"""
