"""Importing this module switches the T0 tasks to the materialised bigscience/P3 data source.

In gin (t5x's hook for task modules): `MIXTURE_OR_TASK_MODULE = 'ext5.tasks.t0.p3'`. Same task and
mixture names; each task reads the P3 config of its own name (see ext5.data.sources.p3_data_source).
"""
from ext5.tasks import t0

t0.register(source="p3")
