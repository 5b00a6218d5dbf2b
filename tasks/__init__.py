"""ext5.tasks: importing this registers every ext5 seqio Task and Mixture.

The registries are imported from this one explicit list (no import-time discovery), so
`ext5 inspect` and readers can see where each name comes from (see ext5.data.registry.ORIGINS).
"""
from ext5.tasks import local  # noqa: F401  local_* tasks and the local_default mixture
from ext5.tasks import t0  # noqa: F401  T0 prompted tasks and mixtures (tasks/t0)
from ext5.tasks import c4, exmix  # noqa: F401  c4_span_corruption, exmix_* tasks, ExMIX/ExT5 mixtures
