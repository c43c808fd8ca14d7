"""The model fleet the sandbox serves: one row per model, everything else is derived from it."""

from dataclasses import dataclass


@dataclass(frozen=True)
class ModelSpec:
    name: str
    provider: str
    cost_per_request: float  # USD, blended prompt + completion
    default_weight: float  # load-balancer weight in [0, 1]


FLEET: tuple[ModelSpec, ...] = (
    ModelSpec("gpt-4", "openai", 0.06, 0.25),
    ModelSpec("gpt-3.5-turbo", "openai", 0.002, 0.15),
    ModelSpec("claude-3-5-sonnet", "anthropic", 0.015, 0.25),
    ModelSpec("claude-3-haiku", "anthropic", 0.00125, 0.1),
    ModelSpec("gemini-pro", "google", 0.0025, 0.1),
    ModelSpec("qwen", "alibaba", 0.002, 0.08),
    ModelSpec("deepseek", "deepseek", 0.0014, 0.07),
)
MODEL_NAMES: tuple[str, ...] = tuple(spec.name for spec in FLEET)
PROVIDERS: tuple[str, ...] = tuple(dict.fromkeys(spec.provider for spec in FLEET))
