"""Prices: USD per token by model alias and deployment, and the most a call to an alias can be charged.

A name clients send that is not itself an alias (a model_aliases name, a name a wildcard alias serves) costs what
the alias serving it costs (config/model_names.py `ModelGroups`): budgets hold for every name that reaches a model."""

from __future__ import annotations

from gateway.config.model_names import ModelGroups
from gateway.config.native import GatewayConfig


class Prices:
    """USD per token by model alias, with per-deployment overrides (hosted fallbacks cost what they cost)."""

    def __init__(self, config: GatewayConfig) -> None:
        self.models = {m.alias: (m.input_cost_per_token, m.output_cost_per_token) for m in config.models}
        self.groups = ModelGroups(self.models, {name: a.model for name, a in config.model_aliases.items()})
        # Every deployment (names are unique across models, config/native.py) costs its own model's price unless
        # it has its own: a call that falls back (alias fallbacks, a body's `fallbacks`, context-window fallbacks)
        # is charged for the model that answered, not the name the client sent.
        self.deployments: dict[str, tuple[float, float]] = {}
        self.per_image: dict[str, float | None] = {}
        own: dict[str, list[tuple[float, float]]] = {}
        for m in config.models:
            own[m.alias] = [self.models[m.alias]]
            for d in m.deployments:
                self.per_image[d.name] = m.output_cost_per_image if d.output_cost_per_image is None \
                    else d.output_cost_per_image
                self.deployments[d.name] = (
                    m.input_cost_per_token if d.input_cost_per_token is None else d.input_cost_per_token,
                    m.output_cost_per_token if d.output_cost_per_token is None else d.output_cost_per_token,
                )
                own[m.alias].append(self.deployments[d.name])
        self.own = own
        # The highest prices a call to an alias can be charged, on any deployment of it or of its fallbacks.
        self.ceilings: dict[str, tuple[float, float]] = {}
        for m in config.models:
            found = [p for alias in (m.alias, *m.fallbacks) for p in own.get(alias, ())]
            self.ceilings[m.alias] = (max(p[0] for p in found), max(p[1] for p in found))
        # The most one image from an alias (or its fallbacks) can cost; None when some deployment has no price.
        self.image_ceilings: dict[str, float | None] = {}
        by_alias = {m.alias: [self.per_image[d.name] for d in m.deployments] for m in config.models}
        for m in config.models:
            image_prices = [p for alias in (m.alias, *m.fallbacks) for p in by_alias.get(alias, ())]
            self.image_ceilings[m.alias] = None if None in image_prices else max(p or 0.0 for p in image_prices)

    def ceiling(self, alias: str) -> tuple[float, float]:
        """What a call to `alias` (or a name it serves) reserves per token."""
        return self.ceilings.get(alias) or self.ceilings.get(self.groups.of(alias) or "") or (0.0, 0.0)

    def unpriced(self) -> list[str]:
        """Aliases whose every deployment costs nothing per token: budgets never bind on calls to them."""
        return [alias for alias, prices in self.own.items() if not any(inp or out for inp, out in prices)]

    def image_ceiling(self, alias: str) -> float | None:
        """What one image from `alias` (or a name it serves) reserves; None when it cannot be priced."""
        group = alias if alias in self.image_ceilings else self.groups.of(alias) or ""
        return self.image_ceilings.get(group)

    def of(self, alias: str, deployment: str = "") -> tuple[float, float]:
        if deployment in self.deployments:  # the deployment that answered decides, even at a price of 0
            return self.deployments[deployment]
        return (self.models.get(alias)
                or self.models.get(self.groups.of(alias) or "") or (0.0, 0.0))

    def cost(self, alias: str, deployment: str, prompt_tokens: int, completion_tokens: int, images: int = 0) -> float:
        """`images`: images in an answer that reported no usage, each at the answering deployment's price
        (LiteLLM: `output_cost_per_image * len(response.data)`, litellm/llms/recraft/cost_calculator.py@v1.106.2)."""
        inp, out = self.of(alias, deployment)
        return prompt_tokens * inp + completion_tokens * out + images * (self.per_image.get(deployment) or 0.0)
