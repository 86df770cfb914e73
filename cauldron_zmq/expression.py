"""KTL wait expressions: ``$service.KEYWORD == 3 and not $svc.BUSY``.

``ktl.waitFor`` blocks until such an expression is true.  KTL users type them
in scripts and sometimes read them from configuration, so they are parsed by
a small recursive-descent parser into a tree that can only compare and combine
values: nothing is ever handed to ``eval``.

Grammar (case-insensitive words, usual precedence: not > and > or)::

    expr       := or
    or         := and (("or" | "||") and)*
    and        := not (("and" | "&&") not)*
    not        := ("not" | "!") not | comparison
    comparison := operand (OP operand)?      OP: == != < <= > >=
    operand    := "(" expr ")" | $service.KEYWORD | number | "string" | 'string'
                | true | false

A keyword operand stands for its current value.  Comparing it with a literal
converts the literal with the keyword's own type first (its ``cast``), so
``$svc.MODE == "ready"`` compares enumerator numbers and ``$svc.T > 3``
compares doubles; a literal the keyword cannot take is compared with the
keyword's ascii form instead (``==``/``!=`` only).  With ``case=False``
(KTL's default) string comparisons ignore case.
"""
from __future__ import annotations

import operator as _op
import re
from dataclasses import dataclass
from typing import Any, Callable, List, NamedTuple, Optional, Tuple, Union

from .errors import CauldronError

__all__ = [
    "ExpressionError",
    "Value",
    "Expression",
    "parse",
    "compare",
    "OPERATORS",
]


class ExpressionError(CauldronError, ValueError):
    """An expression that does not parse, or a comparison that makes no sense."""


class Value(NamedTuple):
    """A keyword's current value as an expression sees it.

    ``cast`` turns a literal into the keyword's native form (raising
    ValueError when it cannot); ``None`` means "compare as given".
    """

    native: Any
    ascii: Optional[str] = None
    cast: Optional[Callable[[Any], Any]] = None


OPERATORS = {
    "==": _op.eq, "!=": _op.ne, "<": _op.lt, "<=": _op.le, ">": _op.gt, ">=": _op.ge,
}

Resolver = Callable[[str, str], Value]


# ------------------------------------------------------------------ comparing

def _fold(x: Any, case: bool) -> Any:
    return x.casefold() if isinstance(x, str) and not case else x


def _literal_as(kw: Value, literal: Any) -> Tuple[Any, Any]:
    """(keyword side, literal side) in a form where comparing them is meaningful."""
    if kw.cast is not None and not isinstance(literal, Value):
        try:
            return kw.native, kw.cast(literal)
        except (ValueError, TypeError):
            if isinstance(literal, str) and kw.ascii is not None:
                return kw.ascii, literal
            raise
    return kw.native, literal


def compare(op: str, left: Any, right: Any, case: bool = False) -> bool:
    """``left OP right`` where either side may be a keyword :class:`Value`.

    Raises ExpressionError for an unknown operator or for values that cannot
    be ordered (``"abc" < 3``); ``==`` between such values is simply False.
    """
    fn = OPERATORS.get(op)
    if fn is None:
        raise ExpressionError(f"unknown operator {op!r}; expected one of {', '.join(OPERATORS)}")
    try:
        a, b = _operands(left, right)
    except (ValueError, TypeError) as exc:
        if op in ("==", "!="):
            return op == "!="
        raise ExpressionError(f"cannot compare {_show(left)} {op} {_show(right)}: {exc}") from None
    if a is None or b is None:               # no value yet: only equality makes sense
        return fn(a, b) if op in ("==", "!=") else False
    try:
        return bool(fn(_fold(a, case), _fold(b, case)))
    except TypeError:
        if op in ("==", "!="):
            return op == "!="
        raise ExpressionError(f"cannot compare {_show(left)} {op} {_show(right)}") from None


def _operands(left: Any, right: Any) -> Tuple[Any, Any]:
    if isinstance(left, Value) and isinstance(right, Value):
        return left.native, right.native
    if isinstance(left, Value):
        return _literal_as(left, right)
    if isinstance(right, Value):
        b, a = _literal_as(right, left)
        return a, b
    return left, right


def _show(x: Any) -> str:
    if isinstance(x, Value):
        return repr(x.ascii if x.ascii is not None else x.native)
    return repr(x)


def truth(x: Any) -> bool:
    """The truth of an operand: a keyword by its native value."""
    return bool(x.native) if isinstance(x, Value) else bool(x)


# ---------------------------------------------------------------------- tree

class Node:
    """Base of the expression tree; ``evaluate`` returns a value or a Value."""

    def evaluate(self, resolve: Resolver, case: bool) -> Any:  # pragma: no cover - abstract
        raise NotImplementedError

    def keywords(self) -> List[Tuple[str, str]]:
        return []


@dataclass(frozen=True)
class Literal(Node):
    value: Any

    def evaluate(self, resolve: Resolver, case: bool) -> Any:
        return self.value


@dataclass(frozen=True)
class KeywordRef(Node):
    service: str
    keyword: str

    def evaluate(self, resolve: Resolver, case: bool) -> Any:
        return resolve(self.service, self.keyword)

    def keywords(self) -> List[Tuple[str, str]]:
        return [(self.service, self.keyword)]


@dataclass(frozen=True)
class Comparison(Node):
    op: str
    left: Node
    right: Node

    def evaluate(self, resolve: Resolver, case: bool) -> Any:
        return compare(self.op, self.left.evaluate(resolve, case),
                       self.right.evaluate(resolve, case), case)

    def keywords(self) -> List[Tuple[str, str]]:
        return self.left.keywords() + self.right.keywords()


@dataclass(frozen=True)
class Not(Node):
    operand: Node

    def evaluate(self, resolve: Resolver, case: bool) -> Any:
        return not truth(self.operand.evaluate(resolve, case))

    def keywords(self) -> List[Tuple[str, str]]:
        return self.operand.keywords()


@dataclass(frozen=True)
class BoolOp(Node):
    op: str            # "and" | "or"
    operands: Tuple[Node, ...]

    def evaluate(self, resolve: Resolver, case: bool) -> Any:
        want = self.op == "or"          # or: stop at the first true; and: at the first false
        for node in self.operands:
            if truth(node.evaluate(resolve, case)) == want:
                return want
        return not want

    def keywords(self) -> List[Tuple[str, str]]:
        return [k for node in self.operands for k in node.keywords()]


# --------------------------------------------------------------------- lexer

_TOKEN = re.compile(r"""
    (?P<ws>\s+)
  | (?P<kw>\$(?P<svc>[A-Za-z_][\w\-]*)\.(?P<name>[A-Za-z_][\w]*))
  | (?P<num>[+-]?(?:0[xX][0-9a-fA-F]+|\d+\.?\d*(?:[eE][+-]?\d+)?|\.\d+(?:[eE][+-]?\d+)?))
  | (?P<str>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*')
  | (?P<op>==|!=|<=|>=|<|>|&&|\|\||!|\(|\))
  | (?P<word>[A-Za-z_]\w*)
""", re.VERBOSE)

_WORDS = {"and": "and", "or": "or", "not": "not", "true": True, "false": False}
_SYMBOLS = {"&&": "and", "||": "or", "!": "not"}


class Token(NamedTuple):
    kind: str        # kw | num | str | op | word | end
    value: Any
    pos: int


def _unescape(text: str) -> str:
    body = text[1:-1]
    return re.sub(r"\\(.)", lambda m: {"n": "\n", "t": "\t"}.get(m.group(1), m.group(1)), body)


def _number(text: str) -> Union[int, float]:
    if text.lower().lstrip("+-").startswith("0x"):
        return int(text, 16)
    try:
        return int(text)
    except ValueError:
        return float(text)


def tokenize(text: str) -> List[Token]:
    """Split ``text`` into tokens; unknown characters are an ExpressionError."""
    tokens: List[Token] = []
    pos = 0
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if m is None:
            raise _error(text, pos, f"unexpected character {text[pos]!r}")
        tokens.append(_token(m, text, pos))
        pos = m.end()
    tokens = [t for t in tokens if t.kind != "ws"]
    tokens.append(Token("end", None, len(text)))
    return tokens


def _token(m: "re.Match[str]", text: str, pos: int) -> Token:
    kind = m.lastgroup or ""
    if kind in ("svc", "name"):
        kind = "kw"
    if m.group("kw"):
        return Token("kw", (m.group("svc").lower(), m.group("name").upper()), pos)
    if kind == "num":
        return Token("num", _number(m.group("num")), pos)
    if kind == "str":
        return Token("str", _unescape(m.group("str")), pos)
    if kind == "op":
        sym = m.group("op")
        return Token("word", _SYMBOLS[sym], pos) if sym in _SYMBOLS else Token("op", sym, pos)
    if kind == "word":
        word = m.group("word").lower()
        if word not in _WORDS:
            raise _error(text, pos, f"unknown word {m.group('word')!r} (keywords are written "
                                    "$service.KEYWORD; strings need quotes)")
        value = _WORDS[word]
        return Token("bool", value, pos) if isinstance(value, bool) else Token("word", value, pos)
    return Token("ws", None, pos)


def _error(text: str, pos: int, why: str) -> ExpressionError:
    return ExpressionError(f"{why} at position {pos} in expression:\n  {text}\n  {' ' * pos}^")


# -------------------------------------------------------------------- parser

class _Parser:
    """Recursive descent over the token list; one method per grammar rule."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.tokens = tokenize(text)
        self.i = 0

    @property
    def tok(self) -> Token:
        return self.tokens[self.i]

    def take(self) -> Token:
        tok = self.tokens[self.i]
        self.i += 1
        return tok

    def is_word(self, word: str) -> bool:
        return self.tok.kind == "word" and self.tok.value == word

    def parse(self) -> Node:
        if self.tok.kind == "end":
            raise _error(self.text, 0, "empty expression")
        node = self.parse_or()
        if self.tok.kind != "end":
            raise _error(self.text, self.tok.pos, f"unexpected {self._describe(self.tok)}")
        return node

    def parse_or(self) -> Node:
        return self._chain("or", self.parse_and)

    def parse_and(self) -> Node:
        return self._chain("and", self.parse_not)

    def _chain(self, word: str, sub: Callable[[], Node]) -> Node:
        nodes = [sub()]
        while self.is_word(word):
            self.take()
            nodes.append(sub())
        return nodes[0] if len(nodes) == 1 else BoolOp(word, tuple(nodes))

    def parse_not(self) -> Node:
        if self.is_word("not"):
            self.take()
            return Not(self.parse_not())
        return self.parse_comparison()

    def parse_comparison(self) -> Node:
        left = self.parse_operand()
        if self.tok.kind == "op" and self.tok.value in OPERATORS:
            op = self.take().value
            right = self.parse_operand()
            if self.tok.kind == "op" and self.tok.value in OPERATORS:
                raise _error(self.text, self.tok.pos,
                             "chained comparisons are not allowed; join them with 'and'")
            return Comparison(op, left, right)
        return left

    def parse_operand(self) -> Node:
        tok = self.take()
        if tok.kind == "op" and tok.value == "(":
            node = self.parse_or()
            if not (self.tok.kind == "op" and self.tok.value == ")"):
                raise _error(self.text, self.tok.pos, f"expected ')', got {self._describe(self.tok)}")
            self.take()
            return node
        if tok.kind == "kw":
            return KeywordRef(*tok.value)
        if tok.kind in ("num", "str", "bool"):
            return Literal(tok.value)
        raise _error(self.text, tok.pos, f"expected a value, got {self._describe(tok)}")

    @staticmethod
    def _describe(tok: Token) -> str:
        if tok.kind == "end":
            return "end of expression"
        if tok.kind == "kw":
            return f"${tok.value[0]}.{tok.value[1]}"
        return repr(tok.value)


@dataclass(frozen=True)
class Expression:
    """A parsed expression: what it reads (``keywords``) and how to evaluate it."""

    text: str
    tree: Node

    @property
    def keywords(self) -> List[Tuple[str, str]]:
        """(service, KEYWORD) pairs in order of appearance, without repeats."""
        seen: List[Tuple[str, str]] = []
        for pair in self.tree.keywords():
            if pair not in seen:
                seen.append(pair)
        return seen

    def evaluate(self, resolve: Resolver, case: bool = False) -> bool:
        """The truth of the expression, reading keywords through ``resolve``."""
        return truth(self.tree.evaluate(resolve, case))


def parse(text: str) -> Expression:
    """Parse a KTL expression; ExpressionError (a ValueError) shows where it went wrong."""
    if not isinstance(text, str):
        raise TypeError(f"an expression is a str, not {type(text).__name__}")
    return Expression(text, _Parser(text).parse())

