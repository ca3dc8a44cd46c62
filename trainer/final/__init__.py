"""`focaltune final` and `focaltune predict`: what runs after the search.

Reading order: ``run`` (the whole command) → ``members`` (one member: train, SWA or best
epoch) → ``ensemble`` (weights, prior bias, the served variant; arrays only) → ``bundle``
(the folder on disk) → ``report`` (what was measured, rendered) → ``predict`` (serving).
"""

from __future__ import annotations

from trainer.final.run import run_final

__all__ = ["run_final"]
