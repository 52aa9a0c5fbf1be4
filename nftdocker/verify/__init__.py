"""verify: the same probes through Docker's iptables rules and the nft table, in network namespaces.

plan (topology, servers, probes: pure) -> session (namespaces, rules loaded) -> agent (the process
in each namespace) -> report (outcomes side by side: pure); run holds the entry points
(:func:`~nftdocker.verify.run.verify`, :func:`~nftdocker.verify.run.coverage`); witness turns
``diff --semantic``'s witness packets into probes; env checks what the host must provide.
"""
