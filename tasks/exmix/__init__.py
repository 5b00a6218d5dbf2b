"""ExMIX: 107 supervised tasks in 8 families (ExT5), one seqio Task per catalogue row, and the
ExMIX / ExT5 mixtures. See docs/exmix.md.

Tasks: `exmix_<dataset>` (catalog.py, tasks.py); mixtures: mixtures.py. Registration reads only
the CSV (no data, no vocabulary download). The vocabulary is T5's unless $EXT5_VOCABULARY (or
`register(vocabulary=...)`) names another ("local" for offline runs and tests).
"""
from __future__ import annotations

from ext5.tasks.exmix import mixtures, tasks
from ext5.tasks.exmix.catalog import FAMILIES, load_catalog  # noqa: F401


def register(vocabulary: str | None = None) -> None:
    """(Re-)registers C4, every ExMIX task and every mixture with the given vocabulary."""
    from ext5.tasks import c4
    tasks.register(vocabulary)
    c4.register(vocabulary)
    mixtures.register()


register()
