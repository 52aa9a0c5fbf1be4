"""The nft layer: rule IR to the kernel's nftables and back. It knows nothing of Docker: it imports
only itself and nftdocker.errors (tests/test_layers.py holds it to that).

:mod:`.ir` (the typed rule IR), :mod:`.render` (IR -> nft text and libnftables JSON), :mod:`.table`
(the tables' names, the mark that makes one ours, our chains), :mod:`.view` (the kernel's view of a
table, and the generated one in the same terms), :mod:`.transaction` (one transaction as typed
operations), :mod:`.replace` (the full replace), :mod:`.diff` (the planner: in-place edit or full
replace), :mod:`.backend` (the libnftables backend), :mod:`.fake` (a kernel in memory, for tests),
:mod:`.netns` (network namespaces entered and locked), :mod:`.commit` (committing an edit, and what
the kernel holds afterwards), :mod:`.netlink` (raw nftables netlink: notifications, dumps),
:mod:`.state` (the table's view stored after our own commit), :mod:`.listing` (the tables listed as
the kernel holds them), :mod:`.parse` (the kernel's JSON listing -> rule IR).
"""
