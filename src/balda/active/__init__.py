"""Active domain adaptation: RIPU region/pixel scores, the exact parallel greedy selection, CBDA's
class-balanced dynamic acquisition, the label store and annotator, and the strategy wrapper that
adds the active-learning losses and acquisition rounds to any base strategy (``active.enabled``)."""

from __future__ import annotations

from balda.active import strategy as _strategy  # noqa: F401 - registers the ``active`` wrapper
