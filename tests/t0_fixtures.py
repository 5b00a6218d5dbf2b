"""Test fixtures: synthetic rows for promptsource templates, generated from what the templates reference.

`fixture_row(jinja_sources)` walks the Jinja syntax trees of all templates of one dataset (prompt and
answer-choices expressions), collects the variables they read (jinja2.meta.find_undeclared_variables)
and infers each one's shape from how it is used:

  x.key / x["key"] / x.get("key")          x is a dict with that key
  x[0], x[i], for y in x, zip(x, ...),     x is a list (as long as the largest constant index needs);
  x | length / join / first / random, ...  the loop variable / element is inferred the same way
  x.split() / x.strip() / x | upper / ...  x is a string
  x == "yes", x in ["a", "b"], {"a": ..}[x] x is a string, and takes the first such constant
  x == 1, x - 1, range(x), list[x]          x is an int (0: a valid index and a "labelled" row)
  lst.index(x)                              lst contains x's value

and builds one row with those shapes: strings are a short two-sentence text, ints 0, lists 4 items. This
is enough for every template of the T0 catalog to render (tests/test_t0.py), without hand-writing a row
per dataset.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Iterable, Sequence

from jinja2 import meta, nodes

TEXT = "The quick brown fox jumps over the lazy dog. It was a sunny day in the park."
LIST_LEN = 4
_GLOBALS = {"zip", "range", "dict", "lipsum", "cycler", "joiner", "namespace", "loop", "answer_choices"}
_STR_METHODS = {"split", "strip", "lstrip", "rstrip", "lower", "upper", "replace", "startswith",
                "endswith", "capitalize", "title", "find", "rfind", "count", "format", "splitlines",
                "isdigit", "isupper", "islower", "partition", "rsplit", "encode", "casefold", "zfill"}
_STR_FILTERS = {"upper", "lower", "trim", "replace", "capitalize", "title", "truncate", "wordcount",
                "center", "indent", "wordwrap", "striptags", "urlize", "format", "escape", "e",
                "forceescape", "regex_replace", "reverse_string"}
_LIST_FILTERS = {"join", "first", "last", "random", "choice", "sort", "unique", "select", "reject",
                 "map", "sum", "max", "min", "batch", "slice", "groupby", "selectattr",
                 "rejectattr", "most_frequent", "shuffle", "length", "count"}
_ELEMENT_FILTERS = {"first", "last", "random", "choice"}
_SAME_FILTERS = {"list", "sort", "unique", "shuffle", "reverse", "default", "d", "safe", "string"}


@dataclasses.dataclass
class Var:
    """What the templates reveal about one value."""
    hints: set = dataclasses.field(default_factory=set)        # "dict" | "list" | "str" | "int"
    keys: dict = dataclasses.field(default_factory=dict)       # dict keys -> Var
    elem: "Var | None" = None                                  # list element
    eq: list = dataclasses.field(default_factory=list)         # constants it should equal (==, in)
    ne: list = dataclasses.field(default_factory=list)         # constants it should differ from (!=)
    max_index: int = -1
    force_str: bool = False                                    # sliced and concatenated to a string

    def key(self, name: str) -> "Var":
        self.hints.add("dict")
        return self.keys.setdefault(name, Var())

    def element(self) -> "Var":
        self.hints.add("list")
        if self.elem is None:
            self.elem = Var()
        return self.elem


@dataclasses.dataclass
class _Literal:
    """A `{% set name = {...} %}` literal, looked up like a constant."""
    value: Any


class _Walker:
    """Visits template syntax trees and records usage on the root variables' `Var`s."""

    def __init__(self, roots: Iterable[str]):
        self.roots = {r: Var() for r in roots}
        self.members: list[tuple[Var, Var]] = []  # (list, value it must contain)

    # expressions -> the Var they denote (None when not a piece of the row)
    def expr(self, n: nodes.Node, scope: dict) -> Var | None:
        if isinstance(n, nodes.Name):
            if n.name in scope:
                v = scope[n.name]
                return v if isinstance(v, Var) else None
            return self.roots.get(n.name)
        if isinstance(n, nodes.Getattr):
            base = self.expr(n.node, scope)
            return base.key(n.attr) if base is not None else None
        if isinstance(n, nodes.Getitem):
            return self._getitem(n, scope)
        if isinstance(n, nodes.Filter):
            return self._filter(n, scope)
        if isinstance(n, nodes.Call):
            return self._call(n, scope)
        if isinstance(n, nodes.Compare):
            self._compare(n, scope)
            return None
        if isinstance(n, (nodes.Add, nodes.Sub, nodes.Mul, nodes.Div, nodes.FloorDiv, nodes.Mod,
                          nodes.Pow)):
            left, right = self.expr(n.left, scope), self.expr(n.right, scope)
            if isinstance(n, nodes.Add):  # s[0].lower() + s[1:]: s is a string, not a list
                for side in (n.left, n.right):
                    if (isinstance(side, nodes.Getitem) and isinstance(side.arg, nodes.Slice)):
                        sliced = self.expr(side.node, scope)
                        if sliced is not None:
                            sliced.force_str = True
            for var, other in ((left, n.right), (right, n.left)):
                if var is not None and isinstance(other, nodes.Const):
                    var.hints.add("str" if isinstance(other.value, str) else "int")
                elif var is not None and not isinstance(n, nodes.Add):
                    var.hints.add("int")
            return None
        if isinstance(n, nodes.Neg):
            v = self.expr(n.node, scope)
            if v is not None:
                v.hints.add("int")
            return None
        for child in n.iter_child_nodes():
            self.expr(child, scope)
        return None

    @staticmethod
    def _literal(n: nodes.Node, scope: dict) -> Any:
        """The python value of a literal (or of a `{% set %}` name bound to one), else None."""
        if isinstance(n, nodes.Name) and isinstance(scope.get(n.name), _Literal):
            return scope[n.name].value
        try:
            return n.as_const() if isinstance(n, (nodes.Const, nodes.Dict, nodes.List,
                                                  nodes.Tuple)) else None
        except nodes.Impossible:
            return None

    def _getitem(self, n: nodes.Getitem, scope: dict) -> Var | None:
        literal = self._literal(n.node, scope)
        if literal is not None:  # {"a": 0, "b": 1}[x] / "ABCD"[i] / [..][i]
            idx = self.expr(n.arg, scope)
            if idx is not None:
                if isinstance(literal, dict):
                    self._const(idx, list(literal), "eq")
                else:
                    idx.hints.add("int")
            return None
        base = self.expr(n.node, scope)
        arg = n.arg
        if isinstance(arg, nodes.Slice):
            for child in arg.iter_child_nodes():
                bound = self.expr(child, scope)
                if bound is not None:
                    bound.hints.add("int")
            return None  # a slice of a list or string: no new element is named
        if isinstance(arg, nodes.Const) and isinstance(arg.value, str):
            return base.key(arg.value) if base is not None else None
        if isinstance(arg, nodes.Const) and isinstance(arg.value, int):
            if base is None:
                return None
            base.max_index = max(base.max_index, arg.value)
            return base.element()
        idx = self.expr(arg, scope)
        if idx is not None:
            idx.hints.add("int")
        return base.element() if base is not None else None

    def _filter(self, n: nodes.Filter, scope: dict) -> Var | None:
        if n.node is None:
            return None
        base = self.expr(n.node, scope)
        for a in list(n.args) + [k.value for k in n.kwargs]:
            self.expr(a, scope)
        if base is None:
            return None
        attr = [k.value.value for k in n.kwargs
                if k.key == "attribute" and isinstance(k.value, nodes.Const)]
        if (n.name in ("selectattr", "rejectattr", "groupby") and n.args
                and isinstance(n.args[0], nodes.Const)):
            attr.append(n.args[0].value)
        for a in attr:  # output | map(attribute="answer"): a list of dicts
            base.element().key(str(a))
        if n.name in _STR_FILTERS:
            base.hints.add("str")
        elif n.name in ("int", "float", "round", "abs"):
            base.hints.add("int")
        elif n.name in _LIST_FILTERS:
            base.hints.add("list")
            el = base.element()
            return el if n.name in _ELEMENT_FILTERS else None
        if n.name in _SAME_FILTERS:
            return base
        return None

    def _call(self, n: nodes.Call, scope: dict) -> Var | None:
        args = [self.expr(a, scope) for a in n.args]
        for k in n.kwargs:
            self.expr(k.value, scope)
        if isinstance(n.node, nodes.Name):
            if n.node.name == "range":
                for a in args:
                    if a is not None:
                        a.hints.add("int")
            elif n.node.name == "zip":
                for a in args:
                    if a is not None:
                        a.element()
            return None
        if isinstance(n.node, nodes.Getattr):
            base = self.expr(n.node.node, scope)
            method = n.node.attr
            if base is None:
                return None
            if method in _STR_METHODS:
                base.hints.add("str")
            elif method == "index":
                base.element()
                if args and args[0] is not None:
                    self.members.append((base, args[0]))
            elif method in ("keys", "values", "items"):
                base.hints.add("dict")
            elif method == "get" and n.args and isinstance(n.args[0], nodes.Const):
                return base.key(n.args[0].value)
            return None
        self.expr(n.node, scope)
        return None

    def _compare(self, n: nodes.Compare, scope: dict) -> None:
        left = n.expr
        for op in n.ops:
            right = op.expr
            lv, rv = self.expr(left, scope), self.expr(right, scope)
            which = "ne" if op.op in ("ne", "notin") else "eq"
            if op.op in ("in", "notin"):
                if lv is not None and isinstance(right, (nodes.List, nodes.Tuple)):
                    consts = [i.value for i in right.items if isinstance(i, nodes.Const)]
                    self._const(lv, consts, which)
                elif lv is not None and isinstance(right, nodes.Const):
                    if isinstance(right.value, (list, tuple)):
                        self._const(lv, list(right.value), which)
                    else:
                        lv.hints.add("str")
                elif rv is not None and isinstance(left, nodes.Const):
                    rv.hints.add("str" if isinstance(left.value, str) else "list")
            elif op.op in ("eq", "ne"):
                for var, other in ((lv, right), (rv, left)):
                    if var is not None and isinstance(other, nodes.Const):
                        self._const(var, [other.value], which)
            else:  # <, >, <=, >=: a number
                for var in (lv, rv):
                    if var is not None:
                        var.hints.add("int")
            left = right

    @staticmethod
    def _const(var: Var, values: list, which: str) -> None:
        for v in values:
            if v is None:
                continue
            var.hints.add("bool" if isinstance(v, bool) else "str" if isinstance(v, str) else "int")
            consts = var.eq if which == "eq" else var.ne
            if v not in consts:
                consts.append(v)

    # statements
    def stmts(self, body: Iterable[nodes.Node], scope: dict) -> None:
        for n in body:
            self.stmt(n, scope)

    def stmt(self, n: nodes.Node, scope: dict) -> None:
        if isinstance(n, nodes.For):
            inner = dict(scope)
            it = n.iter
            if (isinstance(n.target, nodes.Tuple) and isinstance(it, nodes.Call)
                    and isinstance(it.node, nodes.Name) and it.node.name == "zip"):
                srcs = [self.expr(a, scope) for a in it.args]
                for t, src in zip(n.target.items, srcs):
                    if isinstance(t, nodes.Name):
                        inner[t.name] = src.element() if src is not None else None
            else:
                src = self.expr(it, scope)
                el = src.element() if src is not None else None
                for t in ([n.target] if isinstance(n.target, nodes.Name) else n.target.items):
                    if isinstance(t, nodes.Name):
                        inner[t.name] = el if isinstance(n.target, nodes.Name) else None
            if n.test is not None:
                self.expr(n.test, inner)
            self.stmts(n.body, inner)
            self.stmts(n.else_, scope)
        elif isinstance(n, nodes.Assign):
            v = self.expr(n.node, scope)
            literal = self._literal(n.node, scope)
            if isinstance(n.target, nodes.Name):
                scope[n.target.name] = _Literal(literal) if literal is not None else v
        elif isinstance(n, nodes.If):
            self.expr(n.test, scope)
            self.stmts(n.body, scope)
            for e in n.elif_:
                self.stmt(e, scope)
            self.stmts(n.else_, scope)
        elif isinstance(n, nodes.Output):
            for child in n.nodes:
                self.expr(child, scope)
        elif isinstance(n, nodes.Expr) or isinstance(n, nodes.Template):
            for child in n.iter_child_nodes():
                self.expr(child, scope) if isinstance(child, nodes.Expr) else self.stmt(child, scope)
        else:
            for child in n.iter_child_nodes():
                if isinstance(child, nodes.Expr):
                    self.expr(child, scope)
                else:
                    self.stmt(child, scope)


def _kind(var: Var) -> str:
    if var.force_str and not var.keys:
        return "str"
    for k in ("dict", "list", "str", "int", "bool"):
        if k in var.hints:
            return k
    return "str"


def _scalar(kind: str, own: Var | None) -> Any:
    """A scalar that satisfies the template's own comparisons (`==` constants first, avoiding `!=`)."""
    eq, ne = (own.eq, own.ne) if own is not None else ([], [])
    if kind == "bool":
        return next((v for v in eq if isinstance(v, bool)), not any(v is True for v in ne))
    want = str if kind == "str" else int
    for v in eq:  # (an empty string is never the useful choice: it only blanks the output)
        if v == "":
            continue
        if isinstance(v, want) and not isinstance(v, bool) and v not in ne:
            return v
    if kind == "int":
        return next(i for i in range(len(ne) + 1) if i not in ne)
    return TEXT


def _value(var: Var, own: Var | None) -> Any:
    """A value shaped as `var` (all templates' usage) with constants from `own` (this template's)."""
    kind = _kind(var)
    if kind == "dict":
        return {k: _value(v, own.keys.get(k) if own else None) for k, v in var.keys.items()}
    if kind == "list":
        el = var.elem or Var()
        own_el = own.elem if own is not None else None
        n = max(LIST_LEN, var.max_index + 1)
        labels = [c for c in (own_el.eq if own_el else []) if not isinstance(c, bool) and c != ""]
        if labels and _kind(el) in ("str", "int"):  # a list of labels: every constant once
            return [labels[i % len(labels)] for i in range(max(n, len(labels)))]
        return [_value(el, own_el) for _ in range(n)]
    return _scalar(kind, own)


def template_sources(template: Any) -> list[str]:
    """The Jinja sources of a promptsource Template: its prompt and its answer-choices expression."""
    return [s for s in (template.jinja, template.answer_choices) if s]


def _walk(env: Any, sources: Iterable[str]) -> _Walker:
    trees = [env.parse(s) for s in sources]
    roots = set().union(*(meta.find_undeclared_variables(t) for t in trees)) - _GLOBALS
    walker = _Walker(sorted(roots))
    for t in trees:
        walker.stmts(t.body, {})
    # `lst.index(x)`: x's constants become the list's elements so the lookup succeeds.
    for lst, member in walker.members:
        if member.eq and lst.elem is not None:
            lst.elem.eq.extend(c for c in member.eq if c not in lst.elem.eq)
    return walker


def fixture_rows(templates: Sequence[Sequence[str]]) -> list[dict[str, Any]]:
    """One synthetic row per template (each given as its Jinja sources) of one dataset.

    All rows have the same columns, shaped by what *all* the templates read; each row takes the
    constants of its own template (e.g. `label == 1`, `question == "effect"`), so that template's
    branches that need them render.
    """
    from promptsource.templates import env  # its filters (choice, most_frequent) and globals (zip)

    shapes = _walk(env, [s for t in templates for s in t])
    rows = []
    for t in templates:
        own = _walk(env, t)
        rows.append({name: _value(var, own.roots.get(name)) for name, var in shapes.roots.items()})
    return rows


def fixture_row(jinja_sources: Sequence[str]) -> dict[str, Any]:
    """One synthetic row for the given Jinja sources (shapes and constants from all of them)."""
    return fixture_rows([jinja_sources])[0]
