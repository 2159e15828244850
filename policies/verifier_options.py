"""Each verifier's options, typed, so `check-config` reports a bad option with its file, line and field
path instead of the gateway failing at startup. The verifiers themselves (router/verifiers) check the
same values again when built: this layer may not import them, and they are also built from code."""

from __future__ import annotations

import ast
import re
import sys
from typing import Any, Literal
from urllib.parse import urldefrag, urljoin, urlsplit

import jsonschema
import regex
from jsonschema_specifications import REGISTRY as META_SCHEMAS
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from referencing import Resource
from referencing.exceptions import NoSuchAnchor, NoSuchResource, PointerToNowhere, Unresolvable, Unretrievable
from referencing.jsonschema import DRAFT202012

from policies.numbers import Count, Number

Options = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


def check_regex(value: str) -> str:
    """`value` if the `regex` engine (the one rules and verifiers run on, with timeouts) compiles it."""
    try:
        regex.compile(value)
    except RecursionError:  # thousands of nested groups
        raise ValueError("invalid regular expression: nested too deeply") from None
    except (regex.error, OverflowError) as exc:  # a{4294967296}
        raise ValueError(f"invalid regular expression: {exc}") from None
    return value


REF_KEYWORDS = ("$ref", "$dynamicRef")


def schema_problem(schema: dict[str, Any]) -> str | None:
    """Why `schema` cannot be used to validate (one line), or None. Beyond `check_schema`, every reference is
    resolved now: jsonschema resolves them only while validating, so a dangling one would fail each request."""
    try:
        jsonschema.Draft202012Validator.check_schema(schema)
    except jsonschema.SchemaError as exc:
        return _one_line(f"not a valid JSON Schema: {exc.message}")
    except RecursionError:  # Python's words ("maximum recursion depth exceeded in comparison") say nothing here
        return "not a valid JSON Schema: nested too deeply"
    except (re.error, OverflowError) as exc:  # a "pattern" that cannot compile
        return _one_line(f"not a valid JSON Schema: {exc}")
    try:
        return _ref_problem(schema)
    except RecursionError:
        return "not a valid JSON Schema: nested too deeply"


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _container_ids(value: Any) -> set[int]:
    """The ids of every mapping and list inside `value` (iterative: schemas may nest deeply)."""
    out: set[int] = set()
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, (dict, list)) and id(item) not in out:
            out.add(id(item))
            stack.extend(item.values() if isinstance(item, dict) else item)
    return out


def _ref_problem(schema: dict[str, Any]) -> str | None:
    """Walks the subschemas as the 2020-12 validator does (with the same resolver: this document plus the
    bundled meta-schemas, nothing fetched) and looks up each reference; a target inside the document is
    walked too, so a reference under e.g. `definitions` (not a keyword) is checked once something uses it."""
    root: Resource[Any] = DRAFT202012.create_resource(schema)
    own = _container_ids(schema)
    stack = [(root, META_SCHEMAS.resolver_with_root(root), root.id() or "")]
    seen: set[int] = set()
    while stack:
        resource, resolver, base = stack.pop()
        if id(resource.contents) in seen:
            continue
        seen.add(id(resource.contents))
        if isinstance(resource.contents, dict):
            for keyword in REF_KEYWORDS:
                ref = resource.contents.get(keyword)
                if not isinstance(ref, str):
                    continue
                try:
                    resolved = resolver.lookup(ref)
                except (Unresolvable, NoSuchResource, Unretrievable, ValueError) as exc:
                    return _unresolvable(keyword, ref, base, exc)
                if id(resolved.contents) in own:
                    target = DRAFT202012.create_resource(resolved.contents)
                    stack.append((target, resolved.resolver, urldefrag(urljoin(base, ref)).url))
        for sub in resource.subresources():
            sub_id = sub.id()
            stack.append((sub, resolver.in_subresource(sub), urljoin(base, sub_id) if sub_id else base))
    return None


def _unresolvable(keyword: str, ref: str, base: str, exc: Exception) -> str:
    if isinstance(exc, PointerToNowhere):
        return _one_line(f"unresolvable {keyword} {ref!r}: the schema has nothing at that JSON pointer")
    if isinstance(exc, NoSuchAnchor):
        return _one_line(f"unresolvable {keyword} {ref!r}: the schema has no such anchor")
    try:
        remote = urlsplit(urljoin(base, ref)).scheme in ("http", "https")
    except ValueError:
        remote = False
    if remote:
        return _one_line(f"remote {keyword} {ref!r} is not supported (nothing is fetched): put the definition "
                         f"under $defs and refer to it as #/$defs/NAME")
    return _one_line(f"unresolvable {keyword} {ref!r}: only references within the schema are resolved "
                     f"(#/$defs/NAME, #anchor, or an $id inside it)")


class JsonOptions(BaseModel):
    model_config = Options


class JsonSchemaOptions(BaseModel):
    model_config = Options
    schema_: dict[str, Any] | None = Field(default=None, alias="schema")
    from_request: bool = False

    @model_validator(mode="after")
    def _usable(self) -> JsonSchemaOptions:
        if self.schema_ is None and not self.from_request:
            raise ValueError("json_schema needs `schema` or `from_request: true`")
        if self.schema_ is not None and self.from_request:  # which one would be checked is anyone's guess
            raise ValueError("json_schema takes `schema` or `from_request: true`, not both")
        problem = None if self.schema_ is None else schema_problem(self.schema_)
        if problem is not None:
            raise ValueError(problem)
        return self


class RegexOptions(BaseModel):
    model_config = Options
    pattern: str
    flags: str = Field(default="", pattern=r"^[ims]*$")
    mode: Literal["search", "fullmatch"] = "search"
    must_match: bool = True

    @field_validator("pattern")
    @classmethod
    def _compiles(cls, value: str) -> str:
        return check_regex(value)


class MinConfidenceOptions(BaseModel):
    model_config = Options
    max_entropy: Number | None = Field(default=None, ge=0)
    max_mean_entropy: Number | None = Field(default=None, ge=0)
    max_steps: Count | None = Field(default=None, ge=1)
    allow_step_cap: bool = False
    min_tokens_per_pass: Number | None = Field(default=None, ge=0)
    missing: Literal["pass", "fail"] = "fail"


def _runs_nothing(node: ast.stmt) -> bool:
    """A top-level statement of the tests that checks nothing when run: an import, a definition, a docstring, or
    an `if __name__ == "__main__":` block (the tests run as a module, never as the main script)."""
    if isinstance(node, ast.Import | ast.ImportFrom | ast.FunctionDef | ast.AsyncFunctionDef | ast.Pass):
        return True
    if isinstance(node, ast.ClassDef):
        return all(_runs_nothing(inner) for inner in node.body)
    if isinstance(node, ast.Expr):
        return isinstance(node.value, ast.Constant)
    if isinstance(node, ast.If) and isinstance(node.test, ast.Compare) and not node.orelse \
            and [type(op) for op in node.test.ops] == [ast.Eq]:
        names = [node.test.left, *node.test.comparators]
        return any(isinstance(n, ast.Name) and n.id == "__name__" for n in names) and any(
            isinstance(n, ast.Constant) and n.value == "__main__" for n in names)
    return False


def _yields(fn: ast.FunctionDef) -> bool:
    """Whether `fn` itself (not a function or class inside it) has a `yield`: calling it only makes a generator."""
    pending: list[ast.AST] = list(fn.body)
    while pending:
        node = pending.pop()
        if isinstance(node, ast.Yield | ast.YieldFrom):
            return True
        if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda | ast.ClassDef):
            pending.extend(ast.iter_child_nodes(node))
    return False


def tests_problem(tests: str) -> str | None:
    """Why python_tests' `tests` (which compile) could never fail, or never pass, or None. Only their top-level
    `test*` functions and top-level statements run, so tests written as a class (pytest's or unittest's), under
    `if __name__ == "__main__":` or in helpers nothing calls would pass every answer, an empty one too; and the
    sandbox has the standard library only, so tests importing pytest or numpy would fail every answer."""
    body = ast.parse(tests).body
    pending: list[ast.AST] = list(body)
    while pending:  # every import, but one under `try:` (it may have a fallback)
        node = pending.pop()
        names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
            [node.module] if isinstance(node, ast.ImportFrom) and node.module and not node.level else [])
        for name in names:
            if name.split(".")[0] not in sys.stdlib_module_names | {"solution"}:
                return (f"the tests import {name}, but the sandbox has only the standard library (and the answer, "
                        "as `solution`): every answer would fail")
        if not isinstance(node, ast.Try | ast.TryStar):
            pending.extend(ast.iter_child_nodes(node))
    tests_run = [n for n in body if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef) and n.name.startswith("test")]
    for fn in tests_run:  # called plainly, such a function returns a coroutine or generator: its body never runs
        if isinstance(fn, ast.AsyncFunctionDef) or _yields(fn):
            kind = "async" if isinstance(fn, ast.AsyncFunctionDef) else "a generator"
            return f"{fn.name} is {kind}: test functions are called plainly, so its body would never run and it would pass"
        args = fn.args
        required = len(args.posonlyargs) + len(args.args) - len(args.defaults) + sum(
            d is None for d in args.kw_defaults)
        if required:
            return (f"{fn.name} takes arguments: test functions are called with none (there are no pytest fixtures), "
                    "so every answer would fail")
    if tests_run:
        return None
    if not all(_runs_nothing(node) for node in body):
        return None
    return ("the tests check nothing: only top-level `test*` functions and top-level statements run (not a "
            "class's test methods, unittest cases or an `if __name__ == \"__main__\":` block), so every "
            "answer, an empty one too, would pass")


class PythonTestsOptions(BaseModel):
    model_config = Options
    tests: str = Field(min_length=1)
    timeout_s: Number = Field(default=5.0, gt=0, le=60)
    memory_mb: Count = Field(default=256, ge=32, le=4096)

    @field_validator("tests")
    @classmethod
    def _compiles(cls, value: str) -> str:
        try:
            compile(value, "tests.py", "exec")
        except SyntaxError as exc:
            where = f" (line {exc.lineno})" if exc.lineno else ""
            raise ValueError(f"the tests do not compile: {exc.msg}{where}") from None
        except (RecursionError, MemoryError):  # expressions nested too deeply
            raise ValueError("the tests do not compile: nested too deeply") from None
        except ValueError as exc:  # null bytes
            raise ValueError(f"the tests do not compile: {exc}") from None
        if (problem := tests_problem(value)) is not None:
            raise ValueError(problem)
        return value


class JudgeOptions(BaseModel):
    model_config = Options
    model: str
    threshold: Number = Field(default=0.7, ge=0, le=1)
    rubric: str = ""
