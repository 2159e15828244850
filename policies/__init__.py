"""draftgate.yaml: schema, loading with located errors, routing rules, matching and lint."""

from policies.conditions import When
from policies.errors import ConfigError, ConfigProblem, PolicyError, is_union_tag
from policies.lint import implies, lint
from policies.loading import default_config, load, load_text
from policies.matching import ConditionResult, Decision, PolicySet, RequestFacts
from policies.schema import (
    CacheConfig,
    CascadeAction,
    GatewayConfig,
    HostedAction,
    LimitsConfig,
    LocalAction,
    LocalConfig,
    ModelConfig,
    PoliciesConfig,
    RequestedAction,
    Rule,
    VerifierSpec,
)
from policies.verifier_options import schema_problem, tests_problem

__all__ = [
    "CacheConfig",
    "CascadeAction",
    "ConditionResult",
    "ConfigError",
    "ConfigProblem",
    "Decision",
    "GatewayConfig",
    "HostedAction",
    "LimitsConfig",
    "LocalAction",
    "LocalConfig",
    "ModelConfig",
    "PoliciesConfig",
    "PolicyError",
    "PolicySet",
    "RequestFacts",
    "RequestedAction",
    "Rule",
    "VerifierSpec",
    "When",
    "default_config",
    "implies",
    "is_union_tag",
    "lint",
    "load",
    "load_text",
    "schema_problem",
    "tests_problem",
]
