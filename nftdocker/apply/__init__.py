"""The apply engine: a generated host onto the kernel, one transaction per change.

:mod:`.engine` (apply, resume, remove: the one orchestration), :mod:`.replay` (Docker's recorded
calls sent to the kernel as they are), :mod:`.applier` (the long-running applier: the model and
the kernel's handles kept in memory, for ``watch``).
"""
