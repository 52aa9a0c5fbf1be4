"""The compat layer: nftdocker's table read back as iptables rules, and compared with Docker's.

:mod:`.translate` (rule IR -> iptables-save text), :mod:`.reference` (iptables rules read out of
any text that shows them, and diffed), :mod:`.semantic` (what a rule matches, as a box of packet
fields), :mod:`.chain_eval` (one table's chains evaluated for one packet), :mod:`.semantic_diff`
(``diff --semantic``: is a reordering harmless, and which packet it changes).
"""
