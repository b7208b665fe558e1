"""What a request cost: a price per model (USD per 1M input, output and
cached-input tokens), computed for every request (the original charged a
flat rate, and only for keys with a budget).

Lookup, first match wins: the route's own price (``routes[].pricing``),
then the provider's table (``providers[].pricing``, by provider model),
then ``pricing`` in the config, then the built-in defaults below. Model
names match exactly or by longest prefix, so ``gpt-4o-2024-08-06`` takes
``gpt-4o``'s price (and ``gpt-4o-mini`` its own, being longer).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

import msgspec

from .contract import Usage

if TYPE_CHECKING:
    from .config import GatewayConfig, PriceConfig


class Price(msgspec.Struct, frozen=True, kw_only=True):
    """USD per 1M tokens. ``cached_input`` None: cached tokens cost ``input``."""

    input: float = 0.0
    output: float = 0.0
    cached_input: float | None = None


#: List prices of common models (USD per 1M tokens), as published by the
#: providers in 2025-2026; override or extend them with ``pricing`` in the config.
DEFAULT_PRICES: dict[str, Price] = {
    "gpt-4o": Price(input=2.50, output=10.00, cached_input=1.25),
    "gpt-4o-mini": Price(input=0.15, output=0.60, cached_input=0.075),
    "gpt-4.1": Price(input=2.00, output=8.00, cached_input=0.50),
    "gpt-4.1-mini": Price(input=0.40, output=1.60, cached_input=0.10),
    "gpt-4.1-nano": Price(input=0.10, output=0.40, cached_input=0.025),
    "gpt-5": Price(input=1.25, output=10.00, cached_input=0.125),
    "gpt-5-mini": Price(input=0.25, output=2.00, cached_input=0.025),
    "o3": Price(input=2.00, output=8.00, cached_input=0.50),
    "o4-mini": Price(input=1.10, output=4.40, cached_input=0.275),
    "text-embedding-3-small": Price(input=0.02),
    "text-embedding-3-large": Price(input=0.13),
    "claude-opus-4": Price(input=15.00, output=75.00, cached_input=1.50),
    "claude-sonnet-4": Price(input=3.00, output=15.00, cached_input=0.30),
    "claude-3-5-sonnet": Price(input=3.00, output=15.00, cached_input=0.30),
    "claude-3-7-sonnet": Price(input=3.00, output=15.00, cached_input=0.30),
    "claude-haiku-4": Price(input=1.00, output=5.00, cached_input=0.10),
    "claude-3-5-haiku": Price(input=0.80, output=4.00, cached_input=0.08),
    "gemini-2.5-pro": Price(input=1.25, output=10.00, cached_input=0.31),
    "gemini-2.5-flash": Price(input=0.30, output=2.50, cached_input=0.075),
    "gemini-2.0-flash": Price(input=0.10, output=0.40, cached_input=0.025),
    "text-embedding-004": Price(input=0.0),
}


def _by_prefix(table: Mapping[str, Price], model: str) -> Price | None:
    price = table.get(model)
    if price is not None:
        return price
    # Bedrock / Vertex ids: "us.anthropic.claude-3-5-haiku-20241022-v1:0".
    bare = model.rsplit(".", 1)[-1] if "." in model and ":" in model else model
    best = ""
    for name in table:
        if bare.startswith(name) and len(name) > len(best):
            best = name
    return table[best] if best else None


class PriceBook:
    def __init__(self, defaults: Mapping[str, Price] | None = None,
                 by_provider: Mapping[str, Mapping[str, Price]] | None = None,
                 by_route: Mapping[str, Price] | None = None) -> None:
        table = dict(DEFAULT_PRICES)
        table.update(defaults or {})
        self.table = table
        self.by_provider = {k: dict(v) for k, v in (by_provider or {}).items()}
        self.by_route = dict(by_route or {})

    @classmethod
    def from_config(cls, cfg: GatewayConfig) -> PriceBook:
        def conv(p: PriceConfig) -> Price:
            return Price(input=p.input, output=p.output, cached_input=p.cached_input)

        return cls({m: conv(p) for m, p in cfg.pricing.items()},
                   {pr.name: {m: conv(p) for m, p in pr.pricing.items()}
                    for pr in cfg.providers if pr.pricing},
                   {r.model_alias: conv(r.pricing) for r in cfg.routes if r.pricing})

    def price(self, alias: str, provider: str, provider_model: str) -> Price | None:
        route = self.by_route.get(alias)
        if route is not None:
            return route
        own = self.by_provider.get(provider)
        if own:
            found = _by_prefix(own, provider_model)
            if found is not None:
                return found
        return _by_prefix(self.table, provider_model) or _by_prefix(self.table, alias)

    def cost(self, usage: Usage | None, alias: str, provider: str,
             provider_model: str) -> float:
        if usage is None:
            return 0.0
        price = self.price(alias, provider, provider_model)
        if price is None:
            return 0.0
        cached = min(usage.cached_tokens, usage.prompt_tokens)
        cached_price = price.input if price.cached_input is None else price.cached_input
        total = ((usage.prompt_tokens - cached) * price.input + cached * cached_price
                 + usage.completion_tokens * price.output) / 1_000_000
        return round(total, 10)
