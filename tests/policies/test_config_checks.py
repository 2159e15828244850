"""check-config: JSON Schema references, secrets never echoed, duplicates, and messages that say what is wrong."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import policies
from policies import ConfigError

CASCADE = ("models:\n  - name: a\n    model: openai/a\npolicies:\n  rules:\n    - name: r\n      action:\n"
           "        cascade:\n          escalate_to: a\n          verifiers:\n")
VERIFIER = "draftgate.yaml:11: policies.rules[0].action.cascade.verifiers[0].json_schema: "


def problems(text: str, env: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as info:
        policies.load_text(text, env or {}, "draftgate.yaml")
    return [str(p) for p in info.value.problems]


def one_problem(text: str, env: dict[str, str] | None = None) -> str:
    found = problems(text, env)
    assert len(found) == 1, found
    return found[0]


# 1. JSON Schema references are resolved when the config is loaded, not on the first request.

@pytest.mark.parametrize(("schema", "expected"), [
    ('{"$ref": "#/definitions/nowhere"}', "unresolvable $ref '#/definitions/nowhere'"),
    ('{properties: {a: {"$ref": "#/$defs/missing"}}}', "unresolvable $ref '#/$defs/missing'"),
    ('{"$ref": "#/definitions/a", definitions: {a: {"$ref": "#/definitions/b"}}}', "unresolvable $ref "
                                                                                  "'#/definitions/b'"),
    ('{"$ref": "#no-such-anchor"}', "unresolvable $ref '#no-such-anchor'"),
    ('{"$ref": "other.json"}', "unresolvable $ref 'other.json'"),
    ('{"$ref": "https://example.com/schemas/address.json"}', "remote $ref "
                                                             "'https://example.com/schemas/address.json' is not "
                                                             "supported"),
    ('{"$id": "https://example.com/root.json", items: {"$ref": "item.json"}}', "remote $ref 'item.json' is not "
                                                                              "supported"),
])
def test_a_schema_whose_ref_cannot_be_resolved_is_refused_at_the_verifier(schema: str, expected: str) -> None:
    found = one_problem(CASCADE + f"            - json_schema: {{schema: {schema}}}\n")
    assert found.startswith(VERIFIER + expected), found


@pytest.mark.parametrize("schema", [
    '{"$defs": {s: {type: string}}, properties: {a: {"$ref": "#/$defs/s"}, b: {"$ref": "#"}}}',
    '{definitions: {s: {type: string}}, items: {"$ref": "#/definitions/s"}}',
    '{"$defs": {s: {"$anchor": "str", type: string}}, items: {"$ref": "#str"}}',
    '{"$id": "https://example.com/root.json", "$defs": {s: {"$id": "s.json", type: string}}, items: {"$ref": "s.json"}}',
    '{const: {"$ref": "#/nowhere"}}',  # data, not a reference
    '{"$ref": "https://json-schema.org/draft/2020-12/schema"}',  # bundled with jsonschema: nothing to fetch
])
def test_schemas_whose_refs_resolve_load(schema: str) -> None:
    config = policies.load_text(CASCADE + f"            - json_schema: {{schema: {schema}}}\n", {})
    assert config.policies.rules[0].action.verifiers[0].kind == "json_schema"


def test_schema_problem_is_one_reusable_line() -> None:
    schema_problem = policies.schema_problem
    good: dict[str, Any] = {"type": "object", "properties": {"a": {"$ref": "#/$defs/a"}}, "$defs": {"a": {}}}
    assert schema_problem(good) is None
    assert schema_problem({"type": 12}) == "not a valid JSON Schema: 12 is not valid under any of the given schemas"
    missing = schema_problem({"$ref": "#/definitions/nowhere"})
    assert missing is not None and "\n" not in missing and "'#/definitions/nowhere'" in missing
    remote = schema_problem({"items": {"$ref": "http://example.com/x.json#/a"}})
    assert remote is not None and remote.startswith("remote $ref 'http://example.com/x.json#/a' is not supported")
    deep: dict[str, Any] = {}
    for _ in range(5000):
        deep = {"items": deep}
    assert schema_problem(deep) is not None  # nested too deeply: a message, not a RecursionError


def test_schema_and_from_request_together_are_refused() -> None:
    found = one_problem(CASCADE + "            - json_schema: {schema: {type: object}, from_request: true}\n")
    assert found == VERIFIER + "json_schema takes `schema` or `from_request: true`, not both"
    config = policies.load_text(CASCADE + "            - json_schema: {schema: {type: object}, from_request: false}\n",
                                {})
    assert config.policies.rules[0].action.verifiers[0].options["schema"] == {"type": "object"}


# 2. Secrets are never echoed; ordinary values still are.

def test_a_literal_secret_is_not_echoed() -> None:
    assert problems("keys: [{name: ci-bot, key: s3cr3t!}]\nmaster_key: 12345\n") == [
        "draftgate.yaml:2: master_key: Input should be a valid string",
        "draftgate.yaml:1: keys[0].key: String should have at least 8 characters",
    ]
    found = problems("master_key: [1]\nmodels: [{name: a, model: openai/a, api_key: 12345}]\n")
    assert not any("12345" in p for p in found), found


def test_a_value_from_the_environment_is_not_echoed_whatever_its_field() -> None:
    found = one_problem("keys: [{name: ci-bot, key: os.environ/CI_BOT_KEY}]\n", {"CI_BOT_KEY": "s3cr3t!"})
    assert found == "draftgate.yaml:1: keys[0].key: String should have at least 8 characters"
    found = one_problem("models: [{name: a, model: openai/a, timeout_s: os.environ/T}]\n", {"T": "s3cr3t!"})
    assert "s3cr3t" not in found and found.startswith("draftgate.yaml:1: models[0].timeout_s: Input should be")


def test_a_name_from_the_environment_is_named_by_its_variable_in_cross_references() -> None:
    """An unknown alias or an undeclared team read from os.environ/NAME was shown as its value, which the file
    never holds (and the docs promise never to echo): now by the variable the user wrote."""
    env = {"FALLBACK": "gpt-x", "TEAM": "research", "ALIAS": "a"}
    assert problems("models:\n  - name: a\n    model: openai/a\n    fallbacks: [os.environ/FALLBACK]\n"
                    "keys:\n  - name: k\n    key: sk-12345678\n    team: os.environ/TEAM\n"
                    "policies:\n  default: {hosted: os.environ/FALLBACK}\n", env) == [
        "draftgate.yaml:4: models[0].fallbacks[0]: unknown fallback alias (the value of os.environ/FALLBACK)",
        "draftgate.yaml:8: keys[0].team: team (the value of os.environ/TEAM) is not declared in teams",
        "draftgate.yaml:10: policies.default.hosted: unknown model alias (the value of os.environ/FALLBACK)",
    ]
    assert one_problem("models:\n  - name: a\n    model: openai/a\n  - name: os.environ/ALIAS\n"
                       "    model: openai/b\n", env) == "draftgate.yaml:4: models[1].name: duplicate alias " \
                                                          "(the value of os.environ/ALIAS)"
    config = policies.load_text("teams:\n  - name: ops\npolicies:\n  rules:\n    - name: r\n"
                                "      when: {team: os.environ/TEAM}\n      action: local\n", env, "draftgate.yaml")
    assert [str(w) for w in policies.lint(config)] == [  # check-config's warning too
        "draftgate.yaml:6: policies.rules[0].when.team: team (the value of os.environ/TEAM) is not declared in "
        "teams, as every key's team must be: only a virtual key made before teams were declared can match it"]


def test_an_empty_master_key_from_the_environment_is_refused_not_open_mode() -> None:
    """`master_key: os.environ/MASTER_KEY` with the variable set but empty (compose's `${MASTER_KEY:-}`) loaded as
    "", so the gateway ran in open mode, serving anyone, with only a log line to say so."""
    for value in ("", "short"):
        assert one_problem("master_key: os.environ/MASTER_KEY\n", {"MASTER_KEY": value}) == \
            "draftgate.yaml:1: master_key: String should have at least 8 characters"


def test_a_key_with_a_secret_files_trailing_newline_is_refused_without_showing_it() -> None:
    """`master_key: os.environ/MASTER_KEY` read from a secret file kept its newline: every request was a 401
    'Incorrect API key' while check-config said OK."""
    found = problems("master_key: os.environ/MK\nmodels:\n  - name: a\n    model: openai/a\n    api_key: os.environ/AK\n"
                     "keys:\n  - name: k\n    key: os.environ/KK\n"
                     "local:\n  backend: vllm\n  api_base: http://127.0.0.1:8000/v1\n  api_key: os.environ/VK\n",
                     {"MK": "sk-master-123456\n", "AK": " sk-upstream", "KK": "sk-static-123\n", "VK": "token\n"})
    why = "starts or ends with whitespace (a secret file's trailing newline?), which no Authorization header carries"
    assert found == [f"draftgate.yaml:1: master_key: {why}", f"draftgate.yaml:5: models[0].api_key: {why}",
                     f"draftgate.yaml:12: local.api_key: {why}", f"draftgate.yaml:8: keys[0].key: {why}"]


@pytest.mark.parametrize("field", ["client_secret", "db_password", "auth_token", "openai_key"])
def test_fields_named_like_secrets_are_not_echoed(field: str) -> None:
    found = problems(f"policies:\n  rules:\n    - name: r\n      when: {{metadata: {{{field}: 987654321}}}}\n"
                     "      action: local\n")
    assert found and not any("987654321" in p for p in found), found


def test_a_url_with_a_password_is_not_echoed() -> None:
    found = problems("models: [{name: a, model: openai/a, timeout_s: 'https://u:hunter22@host/v1'}]\n")
    assert found and not any("hunter22" in p for p in found), found


def test_a_validator_that_quotes_the_value_it_refuses_keeps_secrets_out() -> None:
    """local.api_base's own message quoted the value: a variable's (here a database URL) and a URL's password."""
    found = one_problem("local:\n  backend: vllm\n  api_base: [http://a/v1, os.environ/URL]\n",
                        {"URL": "postgres//u:hunter22@h/db"})
    assert found == "draftgate.yaml:3: local.api_base: (a value from the environment) is not an http(s) URL: " \
                    "api_base is the vLLM server's /v1 URL, e.g. http://127.0.0.1:8000/v1"
    found = one_problem("local:\n  backend: vllm\n  api_base: https://u:hunter22@h/v1/chat/completions\n")
    assert found.startswith("draftgate.yaml:3: local.api_base: 'https://u:***@h/v1/chat/completions' is an endpoint")


def test_an_ordinary_value_is_still_shown() -> None:
    assert one_problem("models: [{name: a, model: openai/a, timeout_s: slow}]\n").endswith("(got 'slow')")


# 3. Duplicates.

@pytest.mark.parametrize(("text", "expected"), [
    ("teams: [{name: ops}, {name: research}, {name: ops}]\n",
     "draftgate.yaml:1: teams[2].name: duplicate team 'ops' (first on line 1)"),
    ("keys:\n  - {name: bot, key: sk-aaaaaaaaaa}\n  - {name: bot, key: sk-bbbbbbbbbb}\n",
     "draftgate.yaml:3: keys[1].name: duplicate key name 'bot' (first on line 2)"),
    ("policies:\n  rules:\n    - name: r\n      when: {has_tools: true}\n      action: local\n"
     "    - name: r\n      action: local\n",
     "draftgate.yaml:6: policies.rules[1].name: duplicate rule name 'r' (first on line 3)"),
])
def test_duplicate_names_are_refused(text: str, expected: str) -> None:
    assert one_problem(text) == expected


def test_two_static_keys_with_the_same_secret_are_refused_without_showing_it() -> None:
    found = one_problem("keys:\n  - {name: one, key: sk-same-secret}\n  - {name: two, key: os.environ/K}\n",
                        {"K": "sk-same-secret"})
    assert found == "draftgate.yaml:3: keys[1].key: the same secret as keys[0] (line 2): each key needs its own"


# 4. A key's team must be declared, with or without a teams section.

def test_a_static_key_with_the_master_keys_secret_is_refused() -> None:
    """It authenticated as the master key (checked first): admin rights, and its own limits never applied."""
    env = {"MASTER": "sk-shared-secret-1"}
    assert one_problem("master_key: os.environ/MASTER\nkeys:\n  - name: ci\n    key: os.environ/MASTER\n"
                       "    rpm_limit: 5\n", env) == (
        "draftgate.yaml:4: keys[0].key: the same secret as master_key (line 1): a request with it is the admin, "
        "and this key's team, limits and models never apply")


def test_an_undeclared_team_is_refused_even_without_a_teams_section() -> None:
    assert one_problem("keys:\n  - {name: bot, key: sk-aaaaaaaaaa, team: ghost}\n") == (
        "draftgate.yaml:2: keys[0].team: team 'ghost' is not declared in teams")


def test_a_rule_on_a_model_alias_the_gateway_does_not_serve_is_refused() -> None:
    """A request for an unknown alias is a 404 before any rule is matched: `when: {model: gtp-4o}` never held,
    and check-config said OK. The local alias is known even when disabled: a rule may send its requests on."""
    found = problems("models:\n  - name: big\n    model: openai/gpt-4o\nlocal:\n  enabled: false\npolicies:\n"
                     "  rules:\n    - name: r\n      when: {model: [auto, big, gtp-4o, local/diffusiongemma]}\n"
                     "      action: {hosted: big}\n    - name: s\n      when: {model: ghost}\n      action: local\n")
    assert found == [
        "draftgate.yaml:9: policies.rules[0].when.model[2]: unknown model alias 'gtp-4o' (requests for it are "
        "refused before any rule is matched, so this never holds)",
        "draftgate.yaml:12: policies.rules[1].when.model: unknown model alias 'ghost' (requests for it are "
        "refused before any rule is matched, so this never holds)"]
    # So may a key be scoped to it, as a rule may name it; an alias nobody serves stays refused there too.
    found = problems("models:\n  - name: big\n    model: openai/gpt-4o\nlocal:\n  enabled: false\nkeys:\n"
                     "  - {name: bot, key: sk-aaaaaaaaaa, models: [local/diffusiongemma, big, ghost]}\n")
    assert found == ["draftgate.yaml:7: keys[0].models[2]: unknown model alias 'ghost'"]


# 5. Messages that say what is wrong.

def test_the_local_alias_cannot_be_auto_or_empty() -> None:
    """`local.alias: auto` (the alias that lets the policy choose) or '' loaded, as a models[] name could not."""
    assert one_problem("local:\n  alias: auto\n") == "draftgate.yaml:2: local.alias: alias 'auto' is reserved"
    assert one_problem("local:\n  alias: ''\n").startswith(
        "draftgate.yaml:2: local.alias: String should have at least 1 character")


def test_a_model_that_falls_back_to_itself() -> None:
    assert one_problem("models:\n  - name: a\n    model: openai/a\n    fallbacks: [a]\n") == (
        "draftgate.yaml:4: models[0].fallbacks[0]: model 'a' cannot fall back to itself")


def test_an_empty_environment_variable_name() -> None:
    assert one_problem("master_key: os.environ/\n") == (
        "draftgate.yaml:1: master_key: the environment variable's name is missing after os.environ/")


@pytest.mark.parametrize("action", ["bogus", "{local: {}, hosted: a}", "{teleport: x}", "{hosted: 5}", "{cascade: x}"])
def test_a_malformed_action_names_the_allowed_forms(action: str) -> None:
    found = one_problem(f"policies:\n  default: {action}\n")
    assert found.startswith("draftgate.yaml:2: policies.default: an action is one of: requested, local, "
                            "{local: {max_local_tokens: N}}, {hosted: ALIAS}, {cascade: {escalate_to: ALIAS, ...}}")
    assert "discriminator" not in found and "dictionary" not in found


def test_a_kind_key_inside_an_action_is_refused_not_obeyed() -> None:
    """`{local: {kind: hosted, alias: a}}` loaded as a hosted action: the `kind` option replaced the tag."""
    assert one_problem("models: [{name: a, model: openai/a}]\npolicies:\n  default: {local: {kind: hosted, alias: a}}\n") \
        == "draftgate.yaml:3: policies.default: `kind` is not an option of local: the key local itself names the action"


def test_an_empty_when_matches_every_request_as_documented() -> None:
    config = policies.load_text("policies:\n  rules:\n    - name: r\n      when:\n      action: local\n", {})
    assert config.policies.rules[0].when == policies.When()


def test_a_shadowed_rule_warning_has_file_and_line() -> None:
    text = ("policies:\n  rules:\n    - name: all\n      action: local\n"
            "    - name: tools\n      when: {has_tools: true}\n      action: local\n")
    warnings = [str(w) for w in policies.lint(policies.load_text(text, {}, "draftgate.yaml"))]
    assert warnings == ["draftgate.yaml:5: policies.rules[1]: rule 'tools' is unreachable: rule 'all' before it "
                        "matches every request it would match"]


def test_a_rule_on_an_undeclared_team_is_warned_about() -> None:
    """With teams declared every key's team is one of them, so `team: reserch` (a typo) matched no request."""
    text = ("teams:\n  - name: research\npolicies:\n  rules:\n    - name: a\n      when: {team: [research, reserch]}\n"
            "      action: local\n    - name: b\n      when: {team: sales}\n      action: local\n")
    warnings = [str(w) for w in policies.lint(policies.load_text(text, {}, "draftgate.yaml"))]
    tail = "is not declared in teams, as every key's team must be: only a virtual key made before teams were declared"
    assert warnings == [f"draftgate.yaml:6: policies.rules[0].when.team[1]: team 'reserch' {tail} can match it",
                        f"draftgate.yaml:9: policies.rules[1].when.team: team 'sales' {tail} can match it"]
    no_teams = text.replace("teams:\n  - name: research\n", "")  # then a key's team may be any name
    assert policies.lint(policies.load_text(no_teams, {})) == []


def test_a_content_or_messages_condition_that_checks_nothing_is_warned_about() -> None:
    """`content: {scope: last_user}` (its regex commented out) made the rule match every request, silently."""
    text = ("policies:\n  rules:\n    - name: a\n      when:\n        content: {scope: last_user}\n"
            "        messages: {}\n      action: local\n")
    warnings = [str(w) for w in policies.lint(policies.load_text(text, {}, "draftgate.yaml"))]
    assert warnings == [
        "draftgate.yaml:5: policies.rules[0].when.content: gives no regex or keywords, so it checks nothing: every "
        "request passes it",
        "draftgate.yaml:6: policies.rules[0].when.messages: gives no count or roles, so it checks nothing: every "
        "request passes it"]
    assert policies.lint(policies.load_text(text.replace("{scope: last_user}", "{keywords: [x]}").replace(
        "{}", "{roles: [user]}"), {})) == []


def test_local_actions_with_the_local_model_disabled_are_warned_about() -> None:
    text = ("local:\n  enabled: false\nmodels:\n  - name: big\n    model: openai/gpt-4o\npolicies:\n"
            "  default: local\n  rules:\n    - name: cheap\n      when: {has_tools: false}\n      action: local\n"
            "    - name: tools\n      when: {has_tools: true}\n      action: {hosted: big}\n")
    warnings = [str(w) for w in policies.lint(policies.load_text(text, {}, "draftgate.yaml"))]
    assert warnings == [
        "draftgate.yaml:7: policies.default: sends requests to the local model, but local.enabled is false: "
        "they get a 503 local_unavailable",
        "draftgate.yaml:11: policies.rules[0].action: sends requests to the local model, but local.enabled is "
        "false: they get a 503 local_unavailable"]


def test_auto_with_the_local_model_disabled_is_warned_about() -> None:
    """`default: requested` (the default) sends `auto` to the local model: with it disabled, a 503 for every
    `auto` request, and check-config said OK with 0 warnings."""
    def warnings(text: str) -> list[str]:
        return [str(w) for w in policies.lint(policies.load_text(text, {}, "draftgate.yaml"))]

    assert warnings("local:\n  enabled: false\n") == [
        "draftgate.yaml:1: policies.default: serves requests for `auto` with the local model, but local.enabled "
        "is false: they get a 503 local_unavailable"]
    rule = ("local:\n  enabled: false\nmodels:\n  - name: big\n    model: openai/gpt-4o\npolicies:\n"
            "  default: {hosted: big}\n  rules:\n    - name: as-asked\n      when: {team: [research]}\n"
            "      action: requested\n")
    assert warnings(rule) == [
        "draftgate.yaml:11: policies.rules[0].action: serves requests for `auto` with the local model, but "
        "local.enabled is false: they get a 503 local_unavailable"]
    assert warnings(rule.replace("enabled: false", "enabled: true")) == []
    # a rule that matches every request leaves the default nothing to serve: no warning about it (it was one)
    assert warnings("local:\n  enabled: false\nmodels:\n  - name: big\n    model: openai/gpt-4o\npolicies:\n"
                    "  rules:\n    - name: all\n      action: {hosted: big}\n") == []


def test_a_budget_period_without_a_budget_is_warned_about() -> None:
    """A team's or a key's `budget_period` without `max_budget_usd` limits nothing (the CLI and the admin API
    refuse it on virtual keys; in the file it is a warning, so a config that loaded before still loads)."""
    text = ("teams:\n  - name: research\n    budget_period: day\n  - name: ops\n    max_budget_usd: 5\n"
            "    budget_period: day\nkeys:\n  - name: ci\n    key: sk-ci-12345678\n    budget_period: week\n")
    warnings = [str(w) for w in policies.lint(policies.load_text(text, {}, "draftgate.yaml"))]
    assert warnings == [
        "draftgate.yaml:3: teams[0].budget_period: has no max_budget_usd beside it: without a budget a period "
        "limits nothing",
        "draftgate.yaml:10: keys[0].budget_period: has no max_budget_usd beside it: without a budget a period "
        "limits nothing"]


def test_a_vllm_server_without_backend_vllm_is_warned_about() -> None:
    """Without `backend: vllm` the in-process model serves the local route and `api_base` is never read."""
    text = "local:\n  enabled: true\n  api_base: http://127.0.0.1:8000/v1\n"
    warnings = [str(w) for w in policies.lint(policies.load_text(text, {}, "draftgate.yaml"))]
    assert warnings == ["draftgate.yaml:3: local.api_base: is read only with backend: vllm; the local route runs "
                        "the in-process model (set local.backend: vllm)"]
    assert policies.lint(policies.load_text(text + "  backend: vllm\n", {}, "draftgate.yaml")) == []
    keyed = text + "  api_key: sk-vllm\n"  # the servers' --api-key: as unread without backend vllm
    assert [str(w) for w in policies.lint(policies.load_text(keyed, {}, "draftgate.yaml"))][1:] == [
        "draftgate.yaml:4: local.api_key: is read only with backend: vllm; the local route runs the in-process "
        "model (set local.backend: vllm)"]
    assert policies.lint(policies.load_text(keyed + "  backend: vllm\n", {}, "draftgate.yaml")) == []


def test_check_config_prints_the_warning_line_and_no_secret(tmp_path: Path) -> None:
    """End to end: what `draftgate check-config` writes."""
    env = {**os.environ, "CI_BOT_KEY": "s3cr3t!", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    run = [sys.executable, "-m", "gateway.cli", "check-config", "draftgate.yaml"]
    (tmp_path / "draftgate.yaml").write_text("local:\n  enabled: false\npolicies:\n  rules:\n    - name: all\n"
                                             "      action: requested\n    - name: tools\n"
                                             "      when: {has_tools: true}\n      action: requested\n")
    result = subprocess.run(run, capture_output=True, text=True, cwd=tmp_path, env=env, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "warning: draftgate.yaml:7: policies.rules[1]: rule 'tools' is unreachable" in result.stderr
    (tmp_path / "draftgate.yaml").write_text("keys: [{name: ci-bot, key: os.environ/CI_BOT_KEY}]\n")
    result = subprocess.run(run, capture_output=True, text=True, cwd=tmp_path, env=env, timeout=120)
    assert result.returncode == 2 and "keys[0].key: String should have at least 8 characters" in result.stderr
    assert "s3cr3t" not in result.stderr + result.stdout and "Traceback" not in result.stderr
