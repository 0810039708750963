"""The middlebox interface and registry.

A middlebox model is installed on a forwarding node of a running network,
removed cleanly, describes itself (what real boxes behave like this, with the
source in docs/middlebox-evidence.md) and reports counters: packets
seen, changed, dropped, reset. Parameters are given as ``NAME:key=value,...``;
each model declares its parameters with defaults and unknown ones are refused.
Where packets must be rewritten, the packet logic is a pure function over bytes
so it is unit-tested without a network.
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar

from testbed.errors import ConfigError

if TYPE_CHECKING:
    from testbed.net.network import Network


# What a parameter may be: numbers (low, high) inclusive, a tuple of allowed words, or a
# function that raises ConfigError. Every parameter a box declares has one (a test walks the
# registry), so a value outside what the model can mean is refused before anything is built.
Check = tuple[float, float] | tuple[str, ...] | Callable[[Any], object]

PARAM_RANGES: dict[str, Check] = {
    "port": (0, 65535),  # 0 = every port, where the box allows it (see Middlebox.ranges)
    "listen": (1, 65535),
    "seed": (0, 2**63 - 1),
    "kind": (2, 255),  # a TCP option kind other than EOL and NOP (RFC 9293 §3.1)
    "offset": (0, 2**32 - 1),  # a sequence-number offset (32-bit space)
    "rate": (0.0, 1.0),  # a probability
    "direction": ("both", "c2s", "s2c"),
    "skip": (0, 2**31 - 1),  # leading bytes of each stream direction a model leaves alone
    "split": (0, 65535),  # 0 = no splitting, coalescing only (middleboxes/resegment.py)
    "hold_ms": (0.0, 10_000.0),
    "mtu": (68, 65535),  # RFC 791: every host handles 68-byte datagrams
    "coalesce": (0, 1),
}


class Middlebox(abc.ABC):
    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    evidence: ClassVar[str] = ""  # which real boxes do this, and the source
    mechanism: ClassVar[str] = ""  # how the model is built (kernel rules, NFQUEUE, proxy)
    defaults: ClassVar[dict[str, Any]] = {}
    ranges: ClassVar[dict[str, Check]] = {}  # per-box overrides of PARAM_RANGES

    def __init__(self, **params: Any) -> None:
        unknown = set(params) - set(self.defaults)
        if unknown:
            raise ConfigError(
                f"middlebox {self.name} has no parameter(s) {sorted(unknown)}",
                f"known: {sorted(self.defaults) or 'none'}",
            )
        self.params = {**self.defaults}
        for key, value in params.items():
            self.params[key] = _coerce(self.name, key, value, self.defaults[key])
            check_param(self.name, key, self.params[key], self.param_range(key))
        self.net: Network | None = None
        self.node = ""

    @classmethod
    def param_range(cls, key: str) -> Check | None:
        return cls.ranges.get(key, PARAM_RANGES.get(key))

    def install(self, net: Network, node: str) -> None:
        self.net, self.node = net, node
        self._install()

    def remove(self) -> None:
        if self.net is not None:
            self._remove()
            self.net = None

    @abc.abstractmethod
    def _install(self) -> None: ...

    @abc.abstractmethod
    def _remove(self) -> None: ...

    @abc.abstractmethod
    def counters(self) -> dict[str, int]:
        """packets seen / changed / dropped / reset so far."""

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "params": self.params, "description": self.description,
                "evidence": self.evidence, "mechanism": self.mechanism}


def check_param(box: str, key: str, value: Any, check: Check | None) -> None:
    """Raise ConfigError when ``value`` is outside what ``check`` allows."""
    if check is None:
        raise ConfigError(f"middlebox {box}: parameter {key} has no declared range")
    if callable(check):
        check(value)
        return
    low, high = check[0], check[-1]
    if isinstance(low, str):
        if value not in check:
            raise ConfigError(f"middlebox {box}: {key}={value!r} is not one of {check}",
                              f"use {key}={'|'.join(str(c) for c in check)}")
        return
    if not low <= value <= high:
        raise ConfigError(f"middlebox {box}: {key}={value!r} is out of range",
                          f"use {low} <= {key} <= {high}")


def _coerce(box: str, key: str, value: Any, default: Any) -> Any:
    if default is None or isinstance(value, type(default)):
        return value
    try:
        if isinstance(default, bool):
            if str(value).lower() not in ("1", "0", "true", "false", "yes", "no"):
                raise ValueError(value)
            return str(value).lower() in ("1", "true", "yes")
        return type(default)(value)
    except ValueError:
        raise ConfigError(
            f"middlebox {box}: {key}={value!r} is not a {type(default).__name__}"
        ) from None


_REGISTRY: dict[str, Callable[..., Middlebox]] = {}
_ALIASES: dict[str, str] = {}


def register(cls: type[Middlebox]) -> type[Middlebox]:
    if not cls.name or cls.name in _REGISTRY or cls.name in _ALIASES:
        raise ValueError(f"middlebox name {cls.name!r} empty or taken")
    _REGISTRY[cls.name] = cls
    return cls


def register_alias(alias: str, name: str) -> None:
    """Another name for a registered model (``strip-eno`` = ``strip-eno-all``)."""
    if alias in _REGISTRY or alias in _ALIASES or name not in _REGISTRY:
        raise ValueError(f"alias {alias!r} taken or target {name!r} unknown")
    _ALIASES[alias] = name


def resolve(name: str) -> str:
    """The registered model behind ``name`` (itself, or the target of an alias)."""
    return _ALIASES.get(name, name)


def parse_spec(spec: str) -> tuple[str, dict[str, str]]:
    """'NAME:key=value,key=value' -> (name, params).

    An item without '=' continues the previous value, so list values need no quoting:
    'drop-syn-unknown-option:known=2,3,4,5,8,34' gives known='2,3,4,5,8,34'.
    """
    name, _, rest = spec.partition(":")
    params: dict[str, str] = {}
    last: str | None = None
    for item in filter(None, rest.split(",")):
        key, eq, value = item.partition("=")
        if not eq and last is not None:
            params[last] += "," + item.strip()
            continue
        if not eq or not key:
            raise ConfigError(f"bad middlebox parameter {item!r} in {spec!r}", "use key=value")
        last = key.strip()
        params[last] = value.strip()
    return name.strip(), params


def create(spec: str) -> Middlebox:
    name, params = parse_spec(spec)
    if resolve(name) not in _REGISTRY:
        raise ConfigError(f"unknown middlebox {name!r}", f"choose from {', '.join(names())}")
    return _REGISTRY[resolve(name)](**params)


def names() -> list[str]:
    """Every name ``create`` accepts: the models and their aliases."""
    return sorted([*_REGISTRY, *_ALIASES])


def catalogue() -> list[dict[str, Any]]:
    out = []
    for name in sorted(_REGISTRY):
        cls: Any = _REGISTRY[name]
        aliases = sorted(a for a, target in _ALIASES.items() if target == name)
        out.append({"name": name, "description": cls.description, "evidence": cls.evidence,
                    "params": cls.defaults, "mechanism": cls.mechanism, "aliases": aliases})
    return out
