"""KTL expressions: ``($kpffiu.ADC1STA == Ready) and $kbms.focmove == 1``.

``ktl.waitFor``, ``ktl.Expression`` and ``Keyword.waitFor`` take them.  KTL
users type them in scripts and sometimes read them from configuration, so they
are parsed by a small recursive-descent parser into a tree that can only
compute, compare and combine values: nothing is ever handed to ``eval``.

Grammar (words case-insensitive; precedence, lowest first: or, and, not,
comparison, + -, * /, unary -)::

    expr       := or
    or         := and (("or" | "||") and)*
    and        := not (("and" | "&&") not)*
    not        := ("not" | "!") not | comparison
    comparison := sum (OP sum)?             OP: == != < <= > >=
    sum        := product (("+" | "-") product)*
    product    := unary (("*" | "/") unary)*
    unary      := ("-" | "+") unary | operand
    operand    := "(" expr ")" | $service.KEYWORD | service.KEYWORD | number
                | "string" | 'string' | bare-word

``$svc.DATE-OBS`` is one keyword (a dash between letters, after ``$`` only);
a bare word is letters, digits and underscores, with decimal parts
(``OD0.1``); ``&&``, ``||`` and ``!`` are and, or and not.

Keyword-relative expressions (``Keyword.waitFor('== "open"')``) are parsed by
:func:`parse_relative`: a comparison with its left side missing compares the
keyword itself.

A keyword operand stands for its current value (a :class:`Value`).  Comparing
it with a string or a bare word converts the text with the keyword's own type
first (its ``cast``), so an enumerated keyword equals its enumerator name and
its number, and a boolean its names; text the keyword cannot take is compared
with the keyword's ascii form.  Numbers compare with numeric values directly.
A bare word is an enumerator name of the keyword it is compared with, else
just a string (``true``/``false`` are booleans when nothing else gives them a
meaning).  With ``case=False`` (KTL's default) string comparisons ignore case.
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
    "BareWord",
    "Expression",
    "parse",
    "parse_relative",
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


class BareWord(str):
    """An unquoted word (``Ready``, ``INPOS``): an enumerator name, else a string."""

    @property
    def boolean(self) -> Optional[bool]:
        """True/False for the words ``true``/``false``, else None."""
        return {"true": True, "false": False}.get(self.lower())


OPERATORS = {
    "==": _op.eq, "!=": _op.ne, "<": _op.lt, "<=": _op.le, ">": _op.gt, ">=": _op.ge,
}
_ARITHMETIC = {"+": _op.add, "-": _op.sub, "*": _op.mul, "/": _op.truediv}

Resolver = Callable[[str, str], Value]


# ------------------------------------------------------------------ comparing

def _fold(x: Any, case: bool) -> Any:
    return x.casefold() if isinstance(x, str) and not case else x


def _is_number(x: Any) -> bool:
    """int, float or bool (a boolean keyword compares with 0 and 1)."""
    return isinstance(x, (int, float))


def _numeric_text(text: Any) -> Optional[Union[int, float]]:
    """The number a string spells, or None."""
    if not isinstance(text, str):
        return None
    try:
        return _number(text.strip())
    except ValueError:
        return None


def _literal_as(kw: Value, literal: Any, ordering: bool = False) -> Tuple[Any, Any]:
    """(keyword side, literal side) in a form where comparing them is meaningful.

    Raises ValueError/TypeError when there is none (``==`` is then False).
    Text the keyword's type cannot take is compared with its ascii form, for
    equality only (``ordering``: ``$svc.TEMP < 'abc'`` is an error).
    """
    native = kw.native
    if literal is None or native is None:
        return native, literal
    if _is_number(literal) and not isinstance(literal, bool) and _is_number(native):
        return native, literal
    if _is_number(literal) and isinstance(native, str):
        number = _numeric_text(native)        # a string keyword holding "100"
        if number is not None:
            return number, literal
    if isinstance(literal, bool) and isinstance(native, bool):
        return native, literal
    if kw.cast is None:
        return native, literal
    try:
        return native, kw.cast(literal)
    except (ValueError, TypeError):
        if isinstance(literal, str) and kw.ascii is not None and not ordering:
            return kw.ascii, str(literal)
        raise


def compare(op: str, left: Any, right: Any, case: bool = False) -> bool:
    """``left OP right`` where either side may be a keyword :class:`Value`.

    Raises ExpressionError for an unknown operator or for values that cannot
    be ordered (``"abc" < 3``); ``==`` between such values is simply False.
    """
    fn = OPERATORS.get(op)
    if fn is None:
        raise ExpressionError(f"unknown operator {op!r}; expected one of {', '.join(OPERATORS)}")
    try:
        a, b = _operands(left, right, op not in ("==", "!="))
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


def _operands(left: Any, right: Any, ordering: bool = False) -> Tuple[Any, Any]:
    if isinstance(left, Value) and isinstance(right, Value):
        return _both_keywords(left, right)
    if isinstance(left, Value):
        return _literal_as(left, right, ordering)
    if isinstance(right, Value):
        b, a = _literal_as(right, left, ordering)
        return a, b
    return _plain_pair(left), _plain_pair(right)


def _both_keywords(left: Value, right: Value) -> Tuple[Any, Any]:
    """Natives when they are alike; ascii forms when one is text and the other not."""
    a, b = left.native, right.native
    if a is None or b is None or (_is_number(a) and _is_number(b)):
        return a, b
    if isinstance(a, str) != isinstance(b, str) and left.ascii is not None \
            and right.ascii is not None:
        return left.ascii, right.ascii
    return a, b


def _plain_pair(x: Any) -> Any:
    """A literal compared with another literal: ``true``/``false`` are booleans."""
    if isinstance(x, BareWord) and x.boolean is not None:
        return x.boolean
    return x


def _show(x: Any) -> str:
    if isinstance(x, Value):
        return repr(x.ascii if x.ascii is not None else x.native)
    return repr(str(x)) if isinstance(x, BareWord) else repr(x)


def truth(x: Any) -> bool:
    """The truth of an operand: a keyword by its native value."""
    if isinstance(x, Value):
        return bool(x.native)
    if isinstance(x, BareWord) and x.boolean is not None:
        return x.boolean
    return bool(x)


def _arithmetic_operand(x: Any) -> Optional[Union[int, float]]:
    """The number an operand of ``+ - * /`` stands for (None: no value yet)."""
    if isinstance(x, Value):
        if x.native is None:
            return None
        if _is_number(x.native):
            return int(x.native) if isinstance(x.native, bool) else x.native
        x = x.ascii if x.ascii is not None else x.native
    if isinstance(x, bool):
        return int(x)
    if _is_number(x):
        return x
    number = _numeric_text(x)
    if number is None:
        raise ExpressionError(f"cannot do arithmetic with {_show(x)}: not a number")
    return number


def arithmetic(op: str, left: Any, right: Any) -> Optional[Union[int, float]]:
    """``left OP right`` for ``+ - * /`` over numbers and numeric keyword values."""
    a, b = _arithmetic_operand(left), _arithmetic_operand(right)
    if a is None or b is None:
        return None
    try:
        return _ARITHMETIC[op](a, b)
    except ZeroDivisionError:
        raise ExpressionError(f"division by zero: {a!r} / {b!r}") from None


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
class Word(Node):
    """A bare word; what it means depends on what it is compared with."""

    text: str

    def evaluate(self, resolve: Resolver, case: bool) -> Any:
        return BareWord(self.text)


@dataclass(frozen=True)
class KeywordRef(Node):
    service: str
    keyword: str

    def evaluate(self, resolve: Resolver, case: bool) -> Any:
        return resolve(self.service, self.keyword)

    def keywords(self) -> List[Tuple[str, str]]:
        return [(self.service, self.keyword)]


@dataclass(frozen=True)
class Arithmetic(Node):
    op: str            # + - * /
    left: Node
    right: Node

    def evaluate(self, resolve: Resolver, case: bool) -> Any:
        return arithmetic(self.op, self.left.evaluate(resolve, case),
                          self.right.evaluate(resolve, case))

    def keywords(self) -> List[Tuple[str, str]]:
        return self.left.keywords() + self.right.keywords()


@dataclass(frozen=True)
class Negate(Node):
    operand: Node

    def evaluate(self, resolve: Resolver, case: bool) -> Any:
        return arithmetic("-", 0, self.operand.evaluate(resolve, case))

    def keywords(self) -> List[Tuple[str, str]]:
        return self.operand.keywords()


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
  | (?P<kw>\$(?P<svc>[A-Za-z_][\w\-]*)\.(?P<name>[A-Za-z_]\w*(?:-[A-Za-z_]\w*)*))
  | (?P<bare>(?P<bsvc>[A-Za-z_]\w*)\.(?P<bname>[A-Za-z_]\w*))
  | (?P<num>0[xX][0-9a-fA-F]+|\d+\.?\d*(?:[eE][+-]?\d+)?|\.\d+(?:[eE][+-]?\d+)?)
  | (?P<str>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*')
  | (?P<op>==|!=|<=|>=|<|>|&&|\|\||!|\(|\)|\+|-|\*|/)
  | (?P<word>[A-Za-z_]\w*(?:\.\d\w*)*)
""", re.VERBOSE)

_RESERVED = {"and", "or", "not"}
MAX_DEPTH = 40   # nesting of ( ), not, unary minus: deeper is an error, not a RecursionError
_SYMBOLS = {"&&": "and", "||": "or", "!": "not"}


class Token(NamedTuple):
    kind: str        # kw | num | str | op | word (and/or/not) | bare (a bare word) | end
    value: Any
    pos: int


def _unescape(text: str) -> str:
    body = text[1:-1]
    return re.sub(r"\\(.)", lambda m: {"n": "\n", "t": "\t"}.get(m.group(1), m.group(1)), body)


def _number(text: str) -> Union[int, float]:
    """An int or float from text ("3", "-2.5e3", "0x1f"); ValueError otherwise."""
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
        if m.lastgroup != "ws":
            tokens.append(_token(m, pos))
        pos = m.end()
    tokens.append(Token("end", None, len(text)))
    return tokens


def _token(m: "re.Match[str]", pos: int) -> Token:
    if m.group("kw"):
        return Token("kw", (m.group("svc").lower(), m.group("name").upper()), pos)
    if m.group("bare"):
        return Token("kw", (m.group("bsvc").lower(), m.group("bname").upper()), pos)
    if m.group("num") is not None:
        return Token("num", _number(m.group("num")), pos)
    if m.group("str") is not None:
        return Token("str", _unescape(m.group("str")), pos)
    if m.group("op") is not None:
        sym = m.group("op")
        return Token("word", _SYMBOLS[sym], pos) if sym in _SYMBOLS else Token("op", sym, pos)
    word = m.group("word")
    if word.lower() in _RESERVED:
        return Token("word", word.lower(), pos)
    return Token("bare", word, pos)


def _error(text: str, pos: int, why: str) -> ExpressionError:
    return ExpressionError(f"{why} at position {pos} in expression:\n  {text}\n  {' ' * pos}^")


# -------------------------------------------------------------------- parser

class _Parser:
    """Recursive descent over the token list; one method per grammar rule.

    ``implied`` (keyword-relative expressions) is the keyword a comparison
    with no left side compares.
    """

    def __init__(self, text: str, implied: Optional[KeywordRef] = None) -> None:
        self.text = text
        self.tokens = tokenize(text)
        self.i = 0
        self.implied = implied
        self.depth = 0

    def nest(self, pos: int) -> None:
        """One level deeper (a parenthesis, a not, a unary minus); bounded."""
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise _error(self.text, pos, f"nested more than {MAX_DEPTH} levels deep")

    @property
    def tok(self) -> Token:
        return self.tokens[self.i]

    def take(self) -> Token:
        tok = self.tokens[self.i]
        self.i += 1
        return tok

    def is_word(self, word: str) -> bool:
        return self.tok.kind == "word" and self.tok.value == word

    def is_op(self, *ops: str) -> bool:
        return self.tok.kind == "op" and self.tok.value in ops

    def parse(self) -> Node:
        if self.tok.kind == "end":
            raise _error(self.text, 0, "empty expression")
        if self.implied is not None and not self.is_op(*OPERATORS):
            raise _error(self.text, self.tok.pos, "an expression relative to a keyword starts "
                         f"with a comparison ({', '.join(OPERATORS)}), like '== \"open\"'")
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
            self.nest(self.take().pos)
            node: Node = Not(self.parse_not())
            self.depth -= 1
            return node
        return self.parse_comparison()

    def parse_comparison(self) -> Node:
        if self.implied is not None and self.is_op(*OPERATORS):
            left: Node = self.implied             # '== "open"': the keyword itself
        else:
            left = self.parse_sum()
        if self.is_op(*OPERATORS):
            op = self.take().value
            right = self.parse_sum()
            if self.is_op(*OPERATORS):
                raise _error(self.text, self.tok.pos,
                             "chained comparisons are not allowed; join them with 'and'")
            return Comparison(op, left, right)
        return left

    def parse_sum(self) -> Node:
        node = self.parse_product()
        while self.is_op("+", "-"):
            op = self.take().value
            node = Arithmetic(op, node, self.parse_product())
        return node

    def parse_product(self) -> Node:
        node = self.parse_unary()
        while self.is_op("*", "/"):
            op = self.take().value
            node = Arithmetic(op, node, self.parse_unary())
        return node

    def parse_unary(self) -> Node:
        if self.is_op("-", "+"):
            tok = self.take()
            op = tok.value
            self.nest(tok.pos)
            operand = self.parse_unary()
            self.depth -= 1
            if op == "+":
                return operand
            if isinstance(operand, Literal) and _is_number(operand.value):
                return Literal(-operand.value)   # "-0.7" is a number, not an operation
            return Negate(operand)
        return self.parse_operand()

    def parse_operand(self) -> Node:
        tok = self.take()
        if tok.kind == "op" and tok.value == "(":
            self.nest(tok.pos)
            node = self.parse_or()
            self.depth -= 1
            if not self.is_op(")"):
                raise _error(self.text, self.tok.pos, f"expected ')', got {self._describe(self.tok)}")
            self.take()
            return node
        if tok.kind == "kw":
            return KeywordRef(*tok.value)
        if tok.kind in ("num", "str"):
            return Literal(tok.value)
        if tok.kind == "bare":
            return Word(tok.value)
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


def parse_relative(text: str, service: str, keyword: str) -> Expression:
    """Parse an expression relative to ``service.KEYWORD``: ``'== "open"'``, ``'>= 5.0'``.

    Every comparison whose left side is missing compares that keyword, so
    ``'== 1 or == 2'`` works too.  ``text`` must start with a comparison.
    """
    if not isinstance(text, str):
        raise TypeError(f"an expression is a str, not {type(text).__name__}")
    implied = KeywordRef(service.strip().lower(), keyword.strip().upper())
    return Expression(text, _Parser(text, implied).parse())
