"""The host beside the rules: what Docker sets outside its chains, and the user's own additions.

:mod:`.sysctl` (forwarding, route_localnet, bridge-nf-call, hairpin), :mod:`.accept_mark`
(``--accept-mark``: accepts marked for a drop-policy host firewall), :mod:`.user_rules`
(``--user-rules FILE``: the user's rules in ``filter-DOCKER-USER``).
"""
