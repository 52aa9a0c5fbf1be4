"""nftdocker: Docker Engine 28.0.1's bridge-network firewall as native nftables."""

__version__ = "0.1.0"
