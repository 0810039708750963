"""The middlebox catalogue (importing registers every model)."""

from middleboxes import iptables as _iptables  # noqa: F401  (registers the kernel models)
from middleboxes import nfqboxes as _nfqboxes  # noqa: F401  (registers the NFQUEUE models)
from middleboxes import proxyboxes as _proxyboxes  # noqa: F401  (registers the proxies)
from middleboxes.base import Middlebox, catalogue, create, names, parse_spec, register

__all__ = ["Middlebox", "catalogue", "create", "names", "parse_spec", "register"]
