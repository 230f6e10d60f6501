"""``redshake verify``: is the copy all there? Key sets both ways, types, TTLs, values."""

from .compare import Options, Verifier
from .run import Plan, plan_from_config, plan_from_urls, verify
from .side import Endpoint, Side, VerifyError, parse_url

__all__ = [
    "Endpoint", "Options", "Plan", "Side", "Verifier", "VerifyError",
    "parse_url", "plan_from_config", "plan_from_urls", "verify",
]  # fmt: skip
