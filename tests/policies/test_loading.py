"""Loading draftgate.yaml: every problem with its file, line and field path."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

import policies
from policies import ConfigError

GOOD = """\
master_key: os.environ/MASTER
reference_model: gpt-4o-mini
models:
  - name: gpt-4o-mini
    model: openai/gpt-4o-mini
    api_key: os.environ/OPENAI_API_KEY
    price: {input_per_mtok: 0.15, output_per_mtok: 0.60}
    fallbacks: [claude-haiku]
  - name: claude-haiku
    model: anthropic/claude-haiku-4-5
teams:
  - name: research
keys:
  - name: ci-bot
    key: os.environ/CI_KEY
    team: research
policies:
  default: requested
  rules:
    - name: tools
      when: {has_tools: true}
      action: {hosted: gpt-4o-mini}
    - name: json
      when: {has_response_format: true, prompt_tokens: {lt: 2000}}
      action:
        cascade:
          escalate_to: gpt-4o-mini
          mode: refine
          verifiers: [{json_schema: {from_request: true}}, {min_confidence: {max_entropy: 0.8}}]
    - name: rest
      action: local
"""
ENV = {"MASTER": "sk-master-123456", "OPENAI_API_KEY": "sk-openai", "CI_KEY": "sk-ci-key-123"}


def problems(text: str, env: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as info:
        policies.load_text(text, ENV if env is None else env, "draftgate.yaml")
    return [str(p) for p in info.value.problems]


def test_a_good_file_loads_with_env_resolved(tmp_path: Path) -> None:
    path = tmp_path / "draftgate.yaml"
    path.write_text(GOOD)
    config = policies.load(path, ENV)
    assert config.master_key == "sk-master-123456" and config.models[0].api_key == "sk-openai"
    assert config.keys[0].key == "sk-ci-key-123"
    rule = config.policies.rules[1]
    assert rule.action.kind == "cascade" and rule.action.mode == "refine"
    assert [v.kind for v in rule.action.verifiers] == ["json_schema", "min_confidence"]
    assert config.policies.rules[2].action.kind == "local"
    assert config.policies.default.kind == "requested"


def test_default_config_loads() -> None:
    config = policies.default_config()
    assert config.local.enabled and config.local.alias == "local/diffusiongemma" and config.models == []


def test_all_problems_are_reported_together_with_lines() -> None:
    text = GOOD.replace("    fallbacks: [claude-haiku]\n", "    fallbacks: [claude-haiku]\n    colour: blue\n")
    text = text.replace("output_per_mtok: 0.60", "output_per_mtok: cheap")
    found = problems(text, {"OPENAI_API_KEY": "x", "CI_KEY": "sk-ci-key-123"})
    assert found == [
        "draftgate.yaml:1: master_key: environment variable MASTER is not set",
        "draftgate.yaml:7: models[0].price.output_per_mtok: Input should be a valid number, unable to parse "
        "string as a number (got 'cheap')",
        "draftgate.yaml:9: models[0].colour: unknown key",
    ]


def test_semantic_problems() -> None:
    text = GOOD.replace("name: claude-haiku\n", "name: gpt-4o-mini\n").replace(
        "action: {hosted: gpt-4o-mini}", "action: {hosted: gpt-5}").replace(
        "escalate_to: gpt-4o-mini", "escalate_to: nowhere").replace("reference_model: gpt-4o-mini",
                                                                   "reference_model: ghost")
    assert problems(text) == [
        "draftgate.yaml:8: models[0].fallbacks[0]: unknown fallback alias 'claude-haiku'",
        "draftgate.yaml:9: models[1].name: duplicate alias 'gpt-4o-mini'",
        "draftgate.yaml:2: reference_model: unknown model alias 'ghost'",
        "draftgate.yaml:22: policies.rules[0].action.hosted: unknown model alias 'gpt-5'",
        "draftgate.yaml:27: policies.rules[1].action.cascade.escalate_to: unknown model alias 'nowhere'",
    ]


@pytest.mark.parametrize(("text", "expected"), [
    ("", "draftgate.yaml: the file is empty"),
    ("- a\n- b\n", "draftgate.yaml:1: the top level must be a mapping of settings"),
    ("models:\n  - name: a\n   model: b\n", "draftgate.yaml:3: invalid YAML"),
    ("models:\n  - name: a\n", "draftgate.yaml:2: models[0].model: required key is missing"),
    # a typo names the key it was probably meant to be (found in the mapping's own keys)
    ("polices:\n  default: local\n", "draftgate.yaml:1: polices: unknown key (did you mean policies?)"),
    ("policies:\n  rules:\n    - name: r\n      when: {prompt_token: {lt: 5}}\n      action: local\n",
     "draftgate.yaml:4: policies.rules[0].when.prompt_token: unknown key (did you mean prompt_tokens?)"),
    ("policies:\n  default: {cascade: {escalate: a, verifiers: [{min_confidence: {max_entropi: 1}}]}}\n",
     "draftgate.yaml:2: policies.default.cascade.verifiers[0].min_confidence.max_entropi: unknown key (did you mean "
     "max_entropy?)"),
    ("policies:\n  rules:\n    - name: r\n      when: {metadata: {task: {inn: [a]}}}\n      action: local\n",
     "draftgate.yaml:4: policies.rules[0].when.metadata.task.inn: unknown key (did you mean in?)"),
    ("local:\n  backend: vllm\n", "draftgate.yaml:1: local: backend vllm needs api_base"),
    ("local:\n  backend: vllm\n  api_base: []\n", "draftgate.yaml:1: local: backend vllm needs api_base"),
    ("local:\n  backend: vllm\n  api_base: [http://a/v1, http://a/v1]\n", "local: api_base takes at most 64 distinct"),
    ("local:\n  backend: vllm\n  api_base: [http://a/v1, http://a/v1/]\n", "local: api_base takes at most 64 distinct"),
    ("local:\n  backend: vllm\n  api_base: ''\n", "draftgate.yaml:3: local.api_base: '' is not an http"),
    ("local:\n  backend: vllm\n  api_base: localhost:8000/v1\n",
     "draftgate.yaml:3: local.api_base: 'localhost:8000/v1' is not an http(s) URL"),
    ("local:\n  backend: vllm\n  api_base: [http://a/v1, ftp://b/v1]\n", "local.api_base: 'ftp://b/v1'"),
    ("local:\n  backend: vllm\n  api_base: http://a/v1/chat/completions\n", "is an endpoint"),
    # a hosted model's api_base: check-config said OK and every request was a 502 "NonHttpUrlClientError"
    ("models:\n  - name: a\n    model: openai/x\n    api_base: 127.0.0.1:8000/v1\n",
     "draftgate.yaml:4: models[0].api_base: '127.0.0.1:8000/v1' is not an http(s) URL: api_base is the provider's"),
    ("models:\n  - name: a\n    model: openai/x\n    api_base: https://h/v1/chat/completions\n",
     "draftgate.yaml:4: models[0].api_base: 'https://h/v1/chat/completions' is an endpoint"),
    ("policies:\n  rules:\n    - name: r\n      when: {content: {regex: '(x'}}\n      action: local\n",
     "draftgate.yaml:4: policies.rules[0].when.content.regex: invalid regular expression"),
    ("policies:\n  rules:\n    - name: r\n      action: teleport\n", "draftgate.yaml:4: policies.rules[0].action"),
    ("policies:\n  rules:\n    - name: r\n      action: {cascade: {escalate_to: a, verifiers: [{json: {}, regex: {pattern: x}}]}}\n",
     "exactly one kind"),
    ("policies:\n  rules:\n    - name: r\n      when: {content: {regex: 'a{4294967296}'}}\n      action: local\n",
     "draftgate.yaml:4: policies.rules[0].when.content.regex: invalid regular expression"),
    ("policies:\n  rules:\n    - name: r\n      when: {content: {regex: '" + "(" * 3000 + ")" * 3000 + "'}}\n"
     "      action: local\n", "draftgate.yaml:4: policies.rules[0].when.content.regex: invalid regular expression"),
    ("local:\n  enabled: true\nmodels: []\nlocal:\n  enabled: false\n",
     "draftgate.yaml:4: local: duplicate key (first on line 1)"),
    ("a: &a [*a]\n", "draftgate.yaml:1: a YAML alias refers to a value that contains it"),
    ("models:\n  - name: a\n    model: b\n    fallbacks: &f\n      - x\n      - *f\n",  # located: it had no line
     "draftgate.yaml:4: a YAML alias refers to a value that contains it"),
    ("local:\n  enabled: true\n---\npolicies: {}\n",  # was "invalid YAML: but found another document"
     "draftgate.yaml:3: invalid YAML: expected a single document in the stream, but found another document"),
    ("local:\n  enabled: true\npolicies:\n  default: \x00local\n",  # was no line, and a second one "in <string>"
     "draftgate.yaml:4: invalid YAML: character U+0000 is not printable: YAML does not allow it"),
    # values YAML 1.1 reads as a date or a number but that are none: PyYAML raised ValueError, KeyError ...
    ("policies:\n  rules:\n    - name: 2001-13-45\n      action: local\n",
     "draftgate.yaml:3: invalid YAML: this value reads as a YAML timestamp but is not a valid one (quote it"),
    ("teams:\n  - name: t\n    rpm_limit: 0x_\n", "draftgate.yaml:3: invalid YAML: this value reads as a YAML int"),
    ("local:\n  enabled: !!bool maybe\n", "draftgate.yaml:2: invalid YAML: this value reads as a YAML bool"),
    ("database_url: not a url\n", "draftgate.yaml:1: database_url: not a database URL"),
    # Python object tags are refused by the safe loader at their line, never constructed (a guard: an unsafe loader
    # would run os.system here)
    ("local:\n  alias: !!python/object/apply:os.system ['exit 3']\n", "draftgate.yaml:2: invalid YAML: could not "
     "determine a constructor for the tag 'tag:yaml.org,2002:python/object/apply:os.system'"),
    # YAML 1.1 reads some unquoted words and numbers as something else: say so (it was "got False", "got 83")
    ("policies:\n  rules:\n    - name: no\n      action: local\n", "draftgate.yaml:3: policies.rules[0].name: Input "
     "should be a valid string (YAML reads no as False: quote it if it is text)"),
    ("teams:\n  - name: 0123\n", "draftgate.yaml:2: teams[0].name: Input should be a valid string (YAML reads 0123 "
     "as 83: quote it if it is text)"),
    ('models:\n  - name: "a\\ud800"\n    model: openai/x\n',
     "draftgate.yaml:2: models[0].name: holds a lone surrogate"),
    ('"k\\udc00": 1\n', "draftgate.yaml:1: k\\udc00: holds a lone surrogate"),
    ("a: " + "[" * 5000 + "]" * 5000 + "\n", "draftgate.yaml:1: values nested too deeply"),  # had no line
    ("local:\n  enabled: true\nmodels:\n  - " + "{a: " * 2000 + "1" + "}" * 2000 + "\n",
     "draftgate.yaml:4: values nested too deeply"),
    ("policies:\n  rules:\n    - name: r\n      when: {content: {keywords: []}}\n      action: local\n",
     "draftgate.yaml:4: policies.rules[0].when.content.keywords: List should have at least 1 item"),
    ("policies:\n  rules:\n    - name: r\n      when: {metadata: {x: {in: []}}}\n      action: local\n",
     "draftgate.yaml:4: policies.rules[0].when.metadata.x.in: List should have at least 1 item"),
    ("policies:\n  rules:\n    - name: r\n      when: {prompt_tokens: {lt: '5'}}\n      action: local\n",
     "draftgate.yaml:4: policies.rules[0].when.prompt_tokens.lt: Input should be a valid number"),
    ("policies:\n  rules:\n    - name: r\n      when: {has_tools: 'yes'}\n      action: local\n",
     "draftgate.yaml:4: policies.rules[0].when.has_tools: Input should be a valid boolean"),
    ("policies:\n  rules:\n    - name: r\n      when: {prompt_tokens: {lt: .nan}}\n      action: local\n",
     "policies.rules[0].when.prompt_tokens.lt: Input should be a finite number"),
    ("policies:\n  rules:\n    - name: r\n      when: {prompt_tokens: {gt: 10, lt: 5}}\n      action: local\n",
     "policies.rules[0].when.prompt_tokens: these bounds can never all hold"),
    # counts are whole numbers (tokens from 0, messages from 1): bounds no such number meets never match
    ("policies:\n  rules:\n    - name: r\n      when: {prompt_tokens: {lt: 0}}\n      action: local\n",
     "draftgate.yaml:4: policies.rules[0].when.prompt_tokens: prompt_tokens is a whole number from 0 up: no such"),
    ("policies:\n  rules:\n    - name: r\n      when: {messages: {count: {lte: 0}}}\n      action: local\n",
     "draftgate.yaml:4: policies.rules[0].when.messages.count: a request's message count is a whole number from 1"),
    ("policies:\n  rules:\n    - name: r\n      when: {messages: {count: {gt: 2, lt: 3}}}\n      action: local\n",
     "policies.rules[0].when.messages.count: a request's message count is a whole number from 1 up: no such"),
    ("policies:\n  rules:\n    - name: r\n      when: {p_hosted: {gte: 1.5}}\n      action: local\n",
     "policies.rules[0].when.p_hosted: p_hosted is a probability"),
    ("policies:\n  rules:\n    - name: r\n      when: {p_hosted: {lt: 0}}\n      action: local\n",
     "policies.rules[0].when.p_hosted: p_hosted is a probability, never below 0 or above 1: these bounds hold for"),
    ("policies:\n  rules:\n    - name: r\n      when: {p_hosted: {gt: 1}}\n      action: local\n",
     "policies.rules[0].when.p_hosted: p_hosted is a probability, never below 0 or above 1: these bounds hold for"),
    ("policies:\n  rules:\n    - name: r\n      when: {model: 5}\n      action: local\n",  # one problem, no .str
     "draftgate.yaml:4: policies.rules[0].when.model: Input should be a valid string; or Input should be a valid list"),
    # a metadata key named like a pydantic union member (`str`, `list`) is the file's key, not pydantic's wording
    ("policies:\n  rules:\n    - name: r\n      when: {metadata: {list: 5}}\n      action: local\n",
     "draftgate.yaml:4: policies.rules[0].when.metadata.list: Input should be a valid string; or Input should be"),
    ("policies:\n  rules:\n    - name: r\n      when: {metadata: {str: {in: [1]}}}\n      action: local\n",
     "draftgate.yaml:4: policies.rules[0].when.metadata.str.in[0]: Input should be a valid string (got 1)"),
    # `[]` or `""` names no model, team or key: the rule never held, and check-config said OK
    ("policies:\n  rules:\n    - name: r\n      when: {team: []}\n      action: local\n",
     "draftgate.yaml:4: policies.rules[0].when.team: Input should be a valid string; or List should have at least 1"),
    ("policies:\n  rules:\n    - name: r\n      when: {key: ''}\n      action: local\n",
     "draftgate.yaml:4: policies.rules[0].when.key: String should have at least 1 character; or Input should be a"),
    ("policies:\n  rules:\n    - name: r\n      when: {model: [auto, '']}\n      action: local\n",
     "draftgate.yaml:4: policies.rules[0].when.model[1]: String should have at least 1 character"),
    ("policies:\n  rules:\n    - name: r\n      when: {messages: {roles: [sytem, user]}}\n      action: local\n",
     "draftgate.yaml:4: policies.rules[0].when.messages.roles[0]: Input should be 'system', 'developer', 'user', "
     "'assistant', 'tool' or 'function' (got 'sytem')"),  # requests with a system message never matched
    ("policies:\n  rules:\n    - name: r\n      when: {content: {keywords: [json, '']}}\n      action: local\n",
     "draftgate.yaml:4: policies.rules[0].when.content.keywords[1]: String should have at least 1 character"),
    ("teams:\n  - name: t\n    max_budget_usd: '1'\n", "draftgate.yaml:3: teams[0].max_budget_usd: a number, not the text"),
    # YAML has numbers: a quoted one (or a boolean) in any number field is a typo, refused where it is
    ("policies:\n  rules:\n    - name: r\n      action: {local: {max_local_tokens: '100'}}\n",
     "draftgate.yaml:4: policies.rules[0].action.local.max_local_tokens: a number, not the text '100'"),
    ("models:\n  - name: a\n    model: openai/x\n    price: {input_per_mtok: '1', output_per_mtok: 2}\n",
     "draftgate.yaml:4: models[0].price.input_per_mtok: a number, not the text '1'"),
    ("local:\n  max_tokens: true\n", "draftgate.yaml:2: local.max_tokens: a number, not true"),
    ("local:\n  device_usd_per_hour: .inf\n", "draftgate.yaml:2: local.device_usd_per_hour: Input should be a finite"),
    ("keys:\n  - name: " + "k" * 58 + "\n    key: sk-long-name-key\n",  # its ledger key id would not fit
     "draftgate.yaml:2: keys[0].name: String should have at most 57 characters"),
    ("a: &a [1,1,1,1,1,1,1,1,1]\n" + "".join(f"{n}: &{n} [*{p},*{p},*{p},*{p},*{p},*{p},*{p},*{p},*{p}]\n"
                                               for p, n in zip("abcdefghi", "bcdefghij")),
     "draftgate.yaml:6: the file expands to more than 100,000 values (YAML aliases)"),
])
def test_each_error_kind(text: str, expected: str) -> None:
    found = problems(text)
    assert any(p.startswith(expected) or expected in p for p in found), found


CASCADE = "policies:\n  rules:\n    - name: r\n      action:\n        cascade:\n          escalate_to: a\n          verifiers:\n"


@pytest.mark.parametrize(("verifier", "expected"), [
    ("{regex: {patern: x}}", "verifiers[0].regex.patern: unknown key"),
    ("{regex: {pattern: '(x'}}", "verifiers[0].regex.pattern: invalid regular expression"),
    ("{regex: {pattern: x, flags: q}}", "verifiers[0].regex.flags"),
    ("{min_confidence: {max_entropy: -1}}", "verifiers[0].min_confidence.max_entropy: Input should be greater"),
    ("{min_confidence: {missing: maybe}}", "verifiers[0].min_confidence.missing"),
    ("{json_schema: {}}", "verifiers[0].json_schema: json_schema needs `schema` or `from_request: true`"),
    ("{json_schema: {schema: {type: 12}}}", "verifiers[0].json_schema: not a valid JSON Schema"),
    ("{python_tests: {tests: 'def f(:'}}", "verifiers[0].python_tests.tests: the tests do not compile"),
    ("{json_schema: {schema: " + "{not: " * 250 + "{}" + "}" * 250 + "}}",  # was Python's "maximum recursion depth
     "verifiers[0].json_schema: not a valid JSON Schema: nested too deeply"),  # exceeded in comparison"
    ("{regex: {pattern: '" + "(" * 3000 + ")" * 3000 + "'}}", "verifiers[0].regex.pattern: invalid regular expression: "
     "nested too deeply"),
    ("{python_tests: {tests: 'pass', timeout_s: 600}}", "verifiers[0].python_tests.timeout_s"),
    # Tests that never run pass every answer, an empty one too: a pytest class, a main block, an uncalled helper.
    ('{python_tests: {tests: "class TestAdd:\\n  def test_add(self):\\n    assert add(1, 2) == 3\\n"}}',
     "verifiers[0].python_tests.tests: the tests check nothing"),
    ('{python_tests: {tests: "def check():\\n  assert add(1, 2) == 3\\nif __name__ == \'__main__\':\\n  check()\\n"}}',
     "verifiers[0].python_tests.tests: the tests check nothing"),
    ('{python_tests: {tests: "import pytest\\ndef test_a():\\n  assert f() == 1\\n"}}',
     "verifiers[0].python_tests.tests: the tests import pytest, but the sandbox has only the standard library"),
    ("{judge: {model: a, threshold: 2}}", "verifiers[0].judge.threshold"),
    ("{judge: {model: a, threshold: '0.5'}}", "verifiers[0].judge.threshold: a number, not the text '0.5'"),
    ("{min_confidence: {max_entropy: '0.05'}}", "verifiers[0].min_confidence.max_entropy: a number, not the text"),
])
def test_bad_verifier_options_are_config_errors(verifier: str, expected: str) -> None:
    """Caught by the schema, with the line, not when the gateway builds the verifier at startup."""
    found = problems(CASCADE + f"            - {verifier}\n")
    assert any(p.startswith("draftgate.yaml:8: policies.rules[0].action.cascade." + expected) for p in found), found


def test_yaml_exponent_numbers_are_numbers() -> None:
    """PyYAML reads `1e3` as a string (YAML 1.1 wants a dot): bounds and limits still take it as 1000."""
    config = policies.load_text("teams:\n  - name: t\n    tpm_limit: 1e3\npolicies:\n  rules:\n    - name: r\n"
                                "      when: {prompt_tokens: {lt: 1e3}}\n      action: local\n", {})
    assert config.teams[0].tpm_limit == 1000 and config.policies.rules[0].when.prompt_tokens.lt == 1000  # type: ignore[union-attr]


def test_a_number_from_the_environment_is_read_as_one() -> None:
    """`os.environ/NAME` is always text: a number field parses it (a limit refused it as text, echoing the value),
    and a value that is no number is refused without being shown."""
    text = ("teams:\n  - name: t\n    rpm_limit: os.environ/RPM\nmodels:\n  - name: a\n    model: openai/x\n"
            "    timeout_s: os.environ/TIMEOUT\n")
    config = policies.load_text(text, {"RPM": "100", "TIMEOUT": "2.5"})
    assert config.teams[0].rpm_limit == 100 and config.models[0].timeout_s == 2.5
    assert problems(text, {"RPM": "hundred", "TIMEOUT": "1"}) == [
        "draftgate.yaml:3: teams[0].rpm_limit: Input should be a valid integer, unable to parse string as an integer"]


def test_a_file_that_is_not_utf8_is_located_by_line(tmp_path: Path) -> None:
    path = tmp_path / "draftgate.yaml"
    path.write_bytes(b"local:\n  enabled: true\npolicies:\n  rules:\n    - name: caf\xe9\n      action: local\n")
    with pytest.raises(ConfigError) as info:
        policies.load(path, {})
    assert str(info.value.problems[0]).startswith(f"{path}:5: ") and "0xe9" in str(info.value.problems[0])


def test_unreadable_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        policies.load(tmp_path / "missing.yaml", {})
    assert "cannot read the file" in str(info.value)


def test_a_fifo_nothing_writes_to_is_refused_at_once_and_a_pipe_with_a_writer_is_read(tmp_path: Path) -> None:
    """`check-config FIFO` waited forever for a writer; `check-config /dev/zero` read until memory ran out."""
    fifo = tmp_path / "draftgate.yaml"
    os.mkfifo(fifo)
    with pytest.raises(ConfigError) as info:
        policies.load(fifo, {})
    assert str(info.value) == f"{fifo}: cannot read the file: it is a FIFO (named pipe) that nothing writes to, " \
                              "so reading it would wait forever"
    read, write = os.pipe()  # what `check-config <(envsubst < draftgate.yaml.in)` hands over
    os.write(write, b"local:\n  enabled: false\n")
    os.close(write)
    try:
        assert policies.load(Path(f"/dev/fd/{read}"), {}).local.enabled is False
    finally:
        os.close(read)
    with pytest.raises(ConfigError) as info:
        policies.load(Path("/dev/zero"), {})
    assert str(info.value) == "/dev/zero: cannot read the file: it is larger than 16 MiB: not a draftgate config"


def test_an_unset_variable_is_one_problem_not_also_a_bad_value() -> None:
    """The "" that stands in for an unset variable was also reported as too short (a key's secret) or not a
    number: two problems, the second wrong, for one cause."""
    text = GOOD.replace("  - name: claude-haiku\n", "  - name: claude-haiku\n    timeout_s: os.environ/TIMEOUT\n")
    assert problems(text, {"MASTER": "sk-master-123456", "OPENAI_API_KEY": "x"}) == [
        "draftgate.yaml:10: models[1].timeout_s: environment variable TIMEOUT is not set",
        "draftgate.yaml:16: keys[0].key: environment variable CI_KEY is not set",
    ]
    assert problems(GOOD.replace("os.environ/CI_KEY", "os.environ/")) == [
        "draftgate.yaml:15: keys[0].key: the environment variable's name is missing after os.environ/"]
    assert problems(GOOD.replace("os.environ/CI_KEY", "short")) == [
        "draftgate.yaml:15: keys[0].key: String should have at least 8 characters"]  # a real value still is
