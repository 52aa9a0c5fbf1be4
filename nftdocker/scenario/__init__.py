"""The scenario layer: scenario files and ``docker inspect`` dumps read into the typed model, and a
host written back as a scenario file.

:mod:`.load` (the entry points), :mod:`.daemon` (``[daemon]``, ``[host]``), :mod:`.network` and
:mod:`.document` (``[[networks]]``, ``[[containers]]``), :mod:`.publish` (``-p`` syntax),
:mod:`.dump` (the ``docker inspect`` dump), :mod:`.events` (``[[events]]``), :mod:`.context` (the
located errors and value checks they all use), :mod:`.write` (a host as a scenario file).
"""
