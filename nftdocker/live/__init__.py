"""Following a live Docker Engine: ``watch`` keeps nftdocker's table in step with it.

:mod:`.engine` (the Engine's objects and events, the one module that talks to it), :mod:`.batch`
(the events read, gathered into batches, described), :mod:`.replay` (each event as Docker's own
operations on the kept model), :mod:`.watch` (the watcher: sync, events, reconnects), :mod:`.heal`
(noticing others' changes to the table, and what to put back).
"""
