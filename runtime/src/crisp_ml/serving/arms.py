"""Two registered versions in one server: the modes, the split and the settings that choose them.

    single   one version answers (the default, and the server as it always was)
    ab       each request goes to ONE version: the challenger when the SHA-256 of its key, read as
             a fraction in [0, 1), is below SERVING_CHALLENGER_SHARE, else the champion. The key is
             the X-Request-ID header (the server makes a random one when the client sends none:
             unkeyed traffic is split at random), or, with SERVING_ROUTING_COLUMN, the value of
             that input column in the request's FIRST row (null: the request id). The same key
             always gets the same version; all rows of one request go to one version.
    shadow   the champion answers; the challenger scores the same rows after the response is
             sent, and its answers go to the prediction log only (versions.py says how it is bounded)

No MLflow, no FastAPI here: the image runs it, and `make image` validates its settings with it.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping
from dataclasses import dataclass

SINGLE, AB, SHADOW = "single", "ab", "shadow"
MODES = (SINGLE, AB, SHADOW)
CHAMPION, CHALLENGER, SHADOW_ARM = "champion", "challenger", "shadow"  # the log's `arm` values

MODE_ENV = "SERVING_MODE"
CHALLENGER_ENV = "CHALLENGER_BUNDLE"
SHARE_ENV = "SERVING_CHALLENGER_SHARE"
ROUTING_ENV = "SERVING_ROUTING_COLUMN"
SHADOW_QUEUE_ENV = "SERVING_SHADOW_QUEUE"
DEFAULT_SHARE = 0.5
# Requests waiting for the challenger, and their rows: beyond either, shadow scoring is dropped
# (and counted), so a slow challenger costs bounded memory (a request is at most MAX_BODY_BYTES).
DEFAULT_SHADOW_QUEUE = 1000
SHADOW_QUEUE_ROWS = 100_000


class SettingsError(ValueError):
    """An environment setting the server cannot use."""


def parse_mode(raw: str | None) -> str:
    mode = (raw or "").strip().lower() or SINGLE
    if mode not in MODES:
        raise SettingsError(
            f"{MODE_ENV}={raw!r} is not a serving mode: use one of {', '.join(MODES)} "
            f"(e.g. {MODE_ENV}=ab or --mode ab)"
        )
    return mode


def parse_share(raw: str | float | None) -> float:
    """SERVING_CHALLENGER_SHARE (or --share): the challenger's share of ab traffic, in [0, 1]."""
    if raw is None or (isinstance(raw, str) and not raw.strip()):
        return DEFAULT_SHARE
    try:
        share = float(raw)
    except (TypeError, ValueError):
        share = math.nan
    if not 0 <= share <= 1:  # NaN fails too
        raise SettingsError(
            f"{SHARE_ENV}={raw!r} is not a share: set it to a number from 0 to 1, the fraction of "
            f"requests the challenger answers in ab mode (e.g. {SHARE_ENV}=0.1 or --share 0.1)"
        )
    return share


def parse_queue(raw: str | None) -> int:
    text = (raw or "").strip()
    try:
        size = int(text) if text else DEFAULT_SHADOW_QUEUE
    except ValueError:
        size = 0
    if size < 1:
        raise SettingsError(
            f"{SHADOW_QUEUE_ENV}={raw!r}: set it to a whole number of requests, 1 or more "
            f"(default {DEFAULT_SHADOW_QUEUE})"
        )
    return size


@dataclass(frozen=True)
class Plan:
    """How the server uses its two versions (single: only the first)."""

    mode: str = SINGLE
    challenger_bundle: str | None = None
    share: float = DEFAULT_SHARE
    routing_column: str | None = None
    shadow_queue: int = DEFAULT_SHADOW_QUEUE

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Plan:
        return cls(
            mode=parse_mode(env.get(MODE_ENV)),
            challenger_bundle=env.get(CHALLENGER_ENV, "").strip() or None,
            share=parse_share(env.get(SHARE_ENV)),
            routing_column=env.get(ROUTING_ENV, "").strip() or None,
            shadow_queue=parse_queue(env.get(SHADOW_QUEUE_ENV)),
        )


def fraction(key: str) -> float:
    """The key's place in [0, 1): the first 8 bytes of its SHA-256, the same in every process."""
    digest = hashlib.sha256(key.encode("utf-8", "surrogatepass")).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def route(key: str, share: float) -> str:
    """The arm that answers a request keyed `key` in ab mode."""
    return CHALLENGER if fraction(key) < share else CHAMPION


def key_for(arm: str, share: float, prefix: str = "route-") -> str:
    """A request id that `route` sends to `arm` (for checks that must reach each version)."""
    for i in range(100_000):
        if route(key := f"{prefix}{i}", share) == arm:
            return key
    raise ValueError(f"no key reaches the {arm} at share {share}")
