"""nftdocker: Docker Engine 28.0.1's bridge-network firewall as native nftables."""

__version__ = "0.1.0"
#: The Docker Engine whose bridge-network firewall nftdocker reproduces, rule for rule.
DOCKER_ENGINE_VERSION = "28.0.1"
