"""IPython profile of the simulated steered-xas endstation (see ``startup/`` and ``loader.py``)."""
