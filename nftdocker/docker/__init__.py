"""Docker's replay: the typed model driven as Docker 28.0.1 (moby at commit 76417bf763) programs it, as rule IR.

:mod:`.iptables` (Docker's iptables calls on per-chain lists), :mod:`.state` (what the replay keeps
between calls), :mod:`.ipam` (a subnet's address pool), :mod:`.hostports` (port bindings sorted and
allocated), :mod:`.daemon` (the daemon's start), :mod:`.network` (a bridge network's rules),
:mod:`.endpoints` (a container's endpoints), :mod:`.ports` (its port mappings), :mod:`.link`
(legacy ``--link`` rules), :mod:`.containers` (a container's life), :mod:`.generate` (the scenario
replayed: the :class:`~nftdocker.docker.generate.Generated` host), :mod:`.record` (the replay with
its calls recorded), :mod:`.checkpoint` (generation resumed where the last apply left it).
"""
