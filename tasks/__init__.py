"""ext5.tasks: importing this registers every ext5 seqio Task and Mixture.

The registries are imported from this one explicit list (no import-time discovery), so
`ext5 inspect` and readers can see where each name comes from (see ext5.data.registry.ORIGINS).
"""
from ext5.tasks import local  # noqa: F401  local_* tasks and the local_default mixture
