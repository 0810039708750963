"""The middlebox catalogue (importing registers every model)."""

from middleboxes import iptables as _iptables  # noqa: F401  (registers the models)
from middleboxes.base import Middlebox, catalogue, create, names, parse_spec

__all__ = ["Middlebox", "catalogue", "create", "names", "parse_spec"]
