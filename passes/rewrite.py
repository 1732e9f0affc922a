"""Pattern rewriting: rules with a ``pattern``, a ``check`` and a ``rewrite``.

A pattern is a small tree rooted at one op; its leaves bind names::

    class MulByOne(Rule):
        pattern = Op("aten::mul.Tensor", Var("x"), Const("one"))

        def check(self, match):
            if not is_all_ones(match["one"]):
                return "the constant is not all ones"
            return None                        # applies

        def rewrite(self, match, graph):
            return match["x"]                  # replaces the root's output

* ``Op(ops, *inputs, attrs=..., name=...)`` matches a node whose op is one of
  ``ops`` and whose inputs match ``inputs`` one for one (all of them: ATen
  nodes carry every schema argument); ``name`` binds the node.
* ``Var(name)`` matches any value and binds it; the same name twice must be the
  same value. ``Var()`` matches anything and binds nothing.
* ``Const(name, predicate)`` matches a ``prim::Constant`` output and binds its
  Python value.
* ``attrs`` maps an attribute to its required value or to a predicate.

``Rewriter(rules)`` indexes the rules by root op, walks the graph once per
sweep, and sweeps until nothing fires (a fixpoint). ``rewrite`` returns the
values that replace the root's outputs (the root is then erased; other matched
nodes that became dead are left to ``dce``). With ``debug=True`` the rewriter
records why each candidate (a node with a rule's root op) was rejected in the
last sweep, i.e. why the candidates still in the graph were left alone.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from dexport.ir.errors import PassError
from dexport.ir.graph import CONSTANT, Graph, Node, Value


class Match:
    """What a pattern bound: ``match[name]`` is a Value (Var), a Python constant
    (Const) or a Node (Op with a name); ``match.root`` is the matched root node."""

    def __init__(self, root: Node):
        self.root = root
        self.bindings: dict[str, Any] = {}

    def __getitem__(self, name: str) -> Any:
        return self.bindings[name]

    def __contains__(self, name: str) -> bool:
        return name in self.bindings


class Pattern:
    def match_value(self, value: Value, match: Match) -> str | None:
        """Bind into ``match``; None on success, else why it does not match."""
        raise NotImplementedError


class Var(Pattern):
    def __init__(self, name: str | None = None):
        self.name = name

    def match_value(self, value, match):
        if self.name is None:
            return None
        bound = match.bindings.get(self.name)
        if bound is None:
            match.bindings[self.name] = value
            return None
        return None if bound is value else f"{self.name!r} is bound to a different value"


class Const(Pattern):
    def __init__(self, name: str | None = None, predicate: Callable[[Any], bool] | None = None):
        self.name = name
        self.predicate = predicate

    def match_value(self, value, match):
        node = value.node
        if node is None or node.op != CONSTANT:
            return f"expected a constant, got {'a block parameter' if node is None else node.op}"
        constant = node.attrs.get("value")
        if self.predicate is not None and not self.predicate(constant):
            return f"constant {constant!r} fails {getattr(self.predicate, '__name__', 'the predicate')}"
        if self.name is not None:
            match.bindings[self.name] = constant
        return None


class Op(Pattern):
    def __init__(self, ops: str | Sequence[str], *inputs: Pattern,
                 attrs: dict[str, Any] | None = None, name: str | None = None):
        self.ops = (ops,) if isinstance(ops, str) else tuple(ops)
        self.inputs = inputs
        self.attrs = dict(attrs or {})
        self.name = name

    def match_node(self, node: Node, match: Match) -> str | None:
        if node.op not in self.ops:
            return f"expected {' or '.join(self.ops)}, got {node.op}"
        if len(node.inputs) != len(self.inputs):
            return f"{node.op} has {len(node.inputs)} inputs, the pattern {len(self.inputs)}"
        for key, want in self.attrs.items():
            if key not in node.attrs:
                return f"{node.op} has no attribute {key!r}"
            have = node.attrs[key]
            ok = want(have) if callable(want) else (type(have) is type(want) and have == want)
            if not ok:
                return f"attribute {key}={have!r} does not match"
        for i, (pattern, value) in enumerate(zip(self.inputs, node.inputs)):
            reason = pattern.match_value(value, match)
            if reason is not None:
                return f"{node.op} input {i}: {reason}"
        if self.name is not None:
            match.bindings[self.name] = node
        return None

    def match_value(self, value, match):
        if value.node is None:
            return f"expected {' or '.join(self.ops)}, got a block parameter"
        return self.match_node(value.node, match)


class Rule:
    """A rewrite rule. Subclasses set ``pattern`` (an ``Op``) and override
    ``check`` (optional) and ``rewrite``."""
    pattern: Op

    @property
    def name(self) -> str:
        return type(self).__name__

    def check(self, match: Match) -> str | None:
        """None if the rule applies to ``match``, else the reason it does not."""
        return None

    def rewrite(self, match: Match, graph: Graph) -> Value | Sequence[Value]:
        """Build the replacement (new nodes go before ``match.root``) and return
        the values that replace the root's outputs, in order."""
        raise NotImplementedError(f"{self.name}.rewrite")


@dataclass
class Rejection:
    rule: str
    op: str
    scope: str
    reason: str

    def __str__(self) -> str:
        return f"{self.rule} on {self.op}" + (f" ({self.scope})" if self.scope else "") + f": {self.reason}"


@dataclass
class Rewriter:
    """Applies rules to a graph until none fires. ``max_sweeps`` bounds the
    fixpoint: rules that keep firing (undoing each other) raise a PassError."""
    rules: Sequence[Rule]
    debug: bool = False
    max_sweeps: int = 10
    rejections: list[Rejection] = field(default_factory=list, init=False)  # debug mode only
    applied: dict[str, int] = field(default_factory=dict, init=False)       # rewrites per rule

    def __post_init__(self):
        self.index: dict[str, list[Rule]] = {}
        for rule in self.rules:
            for op in rule.pattern.ops:
                self.index.setdefault(op, []).append(rule)

    def apply(self, graph: Graph) -> int:
        """Rewrite ``graph`` in place; returns the number of rewrites."""
        self.applied = {}
        total = 0
        for _ in range(self.max_sweeps):
            fired = self._sweep(graph)
            if not fired:
                return total
            total += fired
        raise PassError(f"rewrite rules still fire after {self.max_sweeps} sweeps: "
                        + ", ".join(sorted(self.applied)),
                        hint="two rules probably undo each other; make one of their checks stricter")

    def _sweep(self, graph: Graph) -> int:
        self.rejections = []  # only the last sweep's: why what is left was left
        fired = 0
        dead: list[Node] = []  # erased together at the end: cheap when they share inputs
        for node in graph.nodes():
            for rule in self.index.get(node.op, ()):
                if node.outputs and not any(o.uses for o in node.outputs):
                    break  # dead: nothing to gain (dce removes it)
                match = Match(node)
                reason = rule.pattern.match_node(node, match)
                if reason is None:
                    reason = rule.check(match)
                if reason is not None:
                    if self.debug:
                        self.rejections.append(Rejection(rule.name, node.op, node.meta.scope, reason))
                    continue
                replacement = rule.rewrite(match, graph)
                if isinstance(replacement, Value):
                    replacement = [replacement]
                node.replace_all_uses_with(list(replacement))
                dead.append(node)
                self.applied[rule.name] = self.applied.get(rule.name, 0) + 1
                fired += 1
                break
        graph.erase_nodes(dead)
        return fired

    def report(self) -> str:
        """Rewrites per rule, then (in debug mode) every rejected candidate."""
        lines = [f"{name}: {count}" for name, count in sorted(self.applied.items())]
        lines += [f"rejected: {r}" for r in self.rejections]
        return "\n".join(lines)
