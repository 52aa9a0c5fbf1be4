"""The scenario layer: scenario files and ``docker inspect`` dumps read into the typed model (load), and a host written back as a scenario file (write)."""
