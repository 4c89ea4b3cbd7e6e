"""The market's constructor parameters (stakes, periods, dispute economics), their profiles and their checks.

`MarketParams.devnet()` is sized for a demo on one machine (votes in seconds), `MarketParams.mainnet_like()`
for a public chain (days). Profiles can also be read from a TOML or JSON file (deploy/profiles/*.toml):
amounts may be written as integers in wei or as strings with a unit ("1 ether", "0.1 ether", "20 gwei"),
periods as integers in seconds or strings with a unit ("20 s", "5 min", "14 days").
No I/O besides reading a profile file; no web3.
"""

from __future__ import annotations

import json
import tomllib
from dataclasses import asdict, dataclass, fields
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

from market.errors import MarketConfigError

ETHER = 10**18
GWEI = 10**9
MAX_BPS = 10_000
_UINT96_MAX = 2**96 - 1
_UINT40_MAX = 2**40 - 1

_AMOUNT_UNITS = {"wei": 1, "gwei": GWEI, "ether": ETHER, "eth": ETHER}
_TIME_UNITS = {
    "s": 1, "sec": 1, "second": 1, "seconds": 1,
    "min": 60, "minute": 60, "minutes": 60,
    "h": 3600, "hour": 3600, "hours": 3600,
    "d": 86400, "day": 86400, "days": 86400,
}  # fmt: skip

# Profile files of a checkout; an installed package falls back to the built-in profiles of the same names.
PROFILES_DIR = Path(__file__).resolve().parents[2] / "deploy" / "profiles"

AMOUNT_FIELDS = ("min_stake", "min_verifier_stake", "dispute_bond", "quorum_stake")
PERIOD_FIELDS = ("unbonding_period", "withdraw_delay", "commit_period", "reveal_period")
BPS_FIELDS = ("slash_bps", "challenger_bps", "verifier_bps", "expert_bond_bps")


@dataclass(frozen=True, slots=True)
class MarketParams:
    """Everything the three constructors take. Amounts in wei, periods in seconds, shares in basis points."""

    min_stake: int
    min_verifier_stake: int
    unbonding_period: int
    withdraw_delay: int
    dispute_bond: int
    commit_period: int
    reveal_period: int
    quorum_stake: int
    slash_bps: int
    challenger_bps: int
    verifier_bps: int
    expert_bond_bps: int

    def __post_init__(self) -> None:
        problems = self.problems()
        if problems:
            raise MarketConfigError("invalid market parameters: " + "; ".join(problems))

    def problems(self) -> list[str]:
        out = []
        for f in fields(self):
            value = getattr(self, f.name)
            if not isinstance(value, int) or isinstance(value, bool):
                out.append(f"{f.name} must be an integer, got {value!r}")
        if out:
            return out
        for name in AMOUNT_FIELDS:
            value = getattr(self, name)
            if not 0 < value <= _UINT96_MAX:
                out.append(f"{name} must be positive and fit 96 bits (wei), got {value}")
        for name in PERIOD_FIELDS:
            value = getattr(self, name)
            if not 0 < value <= _UINT40_MAX:
                out.append(f"{name} must be a positive number of seconds, got {value}")
        for name in BPS_FIELDS:
            value = getattr(self, name)
            if not 0 <= value <= MAX_BPS:
                out.append(f"{name} must be in [0, {MAX_BPS}] basis points, got {value}")
        if self.slash_bps == 0:
            out.append("slash_bps must be positive: a guilty expert must lose something")
        if self.challenger_bps + self.verifier_bps > MAX_BPS:
            out.append("challenger_bps + verifier_bps must not exceed 10000 (they split the slashed stake)")
        vote = self.commit_period + self.reveal_period
        if self.withdraw_delay <= vote:
            out.append(
                f"withdraw_delay ({self.withdraw_delay} s) must exceed commit_period + reveal_period ({vote} s): "
                "a client must not withdraw before a dispute about its calls is decided"
            )
        if self.unbonding_period <= vote:
            out.append(
                f"unbonding_period ({self.unbonding_period} s) must exceed commit_period + reveal_period ({vote} s): "
                "stake must stay slashable while a dispute can still be opened and decided"
            )
        if self.quorum_stake < self.min_verifier_stake:
            out.append("quorum_stake must be at least min_verifier_stake")
        return out

    # Profiles ---------------------------------------------------------------------------------------------------

    @classmethod
    def devnet(cls) -> MarketParams:
        """A local demo: 1 ETH stakes, votes of 20 s + 20 s, unbonding 5 min, withdraw delay 10 min."""
        return cls(
            min_stake=1 * ETHER,
            min_verifier_stake=1 * ETHER,
            unbonding_period=300,
            withdraw_delay=600,
            dispute_bond=ETHER // 10,
            commit_period=20,
            reveal_period=20,
            quorum_stake=2 * ETHER,
            slash_bps=5_000,
            challenger_bps=4_000,
            verifier_bps=4_000,
            expert_bond_bps=5_000,
        )

    @classmethod
    def mainnet_like(cls) -> MarketParams:
        """A public chain: stakes that make Sybils costly, votes over days, unbonding two weeks."""
        day = 86_400
        return cls(
            min_stake=10 * ETHER,
            min_verifier_stake=10 * ETHER,
            unbonding_period=14 * day,
            withdraw_delay=4 * day,
            dispute_bond=1 * ETHER,
            commit_period=1 * day,
            reveal_period=1 * day,
            quorum_stake=30 * ETHER,
            slash_bps=5_000,
            challenger_bps=4_000,
            verifier_bps=4_000,
            expert_bond_bps=5_000,
        )

    @classmethod
    def profile(cls, name: str) -> MarketParams:
        """A built-in profile by name: `devnet` or `mainnet-like`."""
        key = name.strip().lower().replace("_", "-")
        if key == "devnet":
            return cls.devnet()
        if key == "mainnet-like":
            return cls.mainnet_like()
        raise MarketConfigError(
            f"unknown profile {name!r}: use devnet, mainnet-like or a path to a .toml/.json file"
        )

    @classmethod
    def from_mapping(cls, data: dict[str, Any], source: str = "profile") -> MarketParams:
        """From a mapping of field names to integers or unit strings; unknown or missing fields are errors."""
        data = dict(data)
        data.pop("name", None)
        data.pop("description", None)
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        missing = sorted(known - set(data))
        if unknown or missing:
            parts = ([f"unknown {', '.join(unknown)}"] if unknown else []) + (
                [f"missing {', '.join(missing)}"] if missing else []
            )
            raise MarketConfigError(f"{source}: " + "; ".join(parts))
        values = {}
        for name, raw in data.items():
            if name in AMOUNT_FIELDS:
                values[name] = parse_amount(raw, f"{source}: {name}")
            elif name in PERIOD_FIELDS:
                values[name] = parse_period(raw, f"{source}: {name}")
            else:
                values[name] = _parse_int(raw, f"{source}: {name}")
        return cls(**values)

    @classmethod
    def from_file(cls, path: str | Path) -> MarketParams:
        """A profile file: TOML (keys at top level or under [params]) or JSON."""
        path = Path(path).expanduser()
        try:
            text = path.read_text()
        except FileNotFoundError:
            raise MarketConfigError(f"no profile file at {path}") from None
        except OSError as exc:
            raise MarketConfigError(f"cannot read profile {path}: {exc.strerror}") from None
        try:
            data = json.loads(text) if path.suffix == ".json" else tomllib.loads(text)
        except (ValueError, tomllib.TOMLDecodeError) as exc:
            raise MarketConfigError(f"profile {path} does not parse: {exc}") from None
        if isinstance(data.get("params"), dict):
            data = data["params"]
        return cls.from_mapping(data, source=f"profile {path}")

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


def resolve_profile(spec: str, profiles_dir: Path = PROFILES_DIR) -> MarketParams:
    """MarketParams from a profile name (`devnet`, `mainnet-like`: deploy/profiles/<name>.toml when present,
    else the built-in profile) or from the path of a .toml/.json file."""
    path = Path(spec).expanduser()
    if path.suffix in (".toml", ".json") or path.exists():
        return MarketParams.from_file(path)
    named = profiles_dir / f"{spec.strip().lower()}.toml"
    if named.is_file():
        return MarketParams.from_file(named)
    return MarketParams.profile(spec)


def _parse_int(raw: Any, what: str) -> int:
    if isinstance(raw, int) and not isinstance(raw, bool):
        return raw
    raise MarketConfigError(f"{what} must be an integer, got {raw!r}")


def _parse_with_unit(raw: Any, units: dict[str, int], what: str, example: str) -> int:
    if isinstance(raw, int) and not isinstance(raw, bool):
        return raw
    if not isinstance(raw, str):
        raise MarketConfigError(f"{what} must be an integer or a string like {example!r}, got {raw!r}")
    parts = raw.replace("_", "").split()
    if len(parts) == 1:
        parts.append(next(u for u, m in units.items() if m == 1))
    if len(parts) != 2 or parts[1].lower() not in units:
        raise MarketConfigError(f"{what}: cannot read {raw!r}; write it like {example!r}")
    try:
        value = Decimal(parts[0]) * units[parts[1].lower()]
    except InvalidOperation:
        raise MarketConfigError(f"{what}: {parts[0]!r} is not a number") from None
    if value != value.to_integral_value():
        raise MarketConfigError(f"{what}: {raw!r} is not a whole number of the base unit")
    return int(value)


def parse_amount(raw: Any, what: str = "amount") -> int:
    """Wei from an integer or a string such as "0.1 ether" or "20 gwei"."""
    return _parse_with_unit(raw, _AMOUNT_UNITS, what, "0.1 ether")


def parse_period(raw: Any, what: str = "period") -> int:
    """Seconds from an integer or a string such as "20 s" or "14 days"."""
    return _parse_with_unit(raw, _TIME_UNITS, what, "14 days")
