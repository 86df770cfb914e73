"""A keyword as an operand: KTL compares and computes by its binary value."""
from __future__ import annotations

from typing import Any, Optional

from ..expression import ExpressionError, Value, compare


class Operators:
    """``kw > 5``, ``kw == 'Open'``, ``abs(kw) > other``, ``'%s' % kw`` (mixed into Keyword)."""

    # ------------------------------------------------- values as operands
    # KTL's Keyword compares and computes by its binary value: ``kw > 5``,
    # ``kw == 'Open'``, ``abs(kw) > other_kw``, ``'%s' % kw``.  A keyword that
    # has no value yet is read once first.  ``__eq__`` compares values, yet
    # ``__hash__`` stays the object's identity: a Keyword is still a usable
    # dict key and set member (one Keyword object per name and Service, so
    # identity is the name), and a value that changes never moves it in a
    # dict.  ``kw in {'Open'}`` is therefore False; compare explicitly.

    def _binary_now(self) -> Any:
        """The cached binary value, read from the dispatcher if none arrived yet."""
        if not self._view().populated:
            self.read()
        return self._view().value

    def _operand(self) -> Value:
        self._binary_now()
        return self._snapshot_view()

    def _snapshot_view(self) -> Value:
        state = self._view()
        return Value(state.value, state.ascii, self.cast)

    def _compare_to(self, op: str, other: Any) -> bool:
        right = other._operand() if isinstance(other, Operators) else other
        try:
            return compare(op, self._operand(), right, case=True)
        except ExpressionError as exc:
            raise TypeError(f"{self.full_name}: {exc}") from None

    def __eq__(self, other: object) -> bool:
        return other is self or self._compare_to("==", other)

    def __ne__(self, other: object) -> bool:
        return other is not self and self._compare_to("!=", other)

    def __lt__(self, other: Any) -> bool:
        return self._compare_to("<", other)

    def __le__(self, other: Any) -> bool:
        return self._compare_to("<=", other)

    def __gt__(self, other: Any) -> bool:
        return self._compare_to(">", other)

    def __ge__(self, other: Any) -> bool:
        return self._compare_to(">=", other)

    __hash__ = object.__hash__        # identity, on purpose: see above

    def __str__(self) -> str:
        """The ascii value (read first if none arrived yet), as KTL's ``str(kw)``."""
        self._binary_now()
        text = self._view().ascii
        return "" if text is None else text

    def __format__(self, spec: str) -> str:
        """``f"{kw}"`` is the ascii value; ``f"{kw:.2f}"`` formats the binary value."""
        return str(self) if not spec else format(self._binary_now(), spec)

    def __int__(self) -> int:
        return int(self._binary_now())

    def __float__(self) -> float:
        return float(self._binary_now())

    def __round__(self, ndigits: Optional[int] = None) -> Any:
        return round(self._binary_now(), ndigits)

    def __abs__(self) -> Any:
        return abs(self._binary_now())

    def __neg__(self) -> Any:
        return -self._binary_now()

    def __pos__(self) -> Any:
        return +self._binary_now()

    def __add__(self, other: Any) -> Any:
        return self._binary_now() + _value_of(other)

    def __radd__(self, other: Any) -> Any:
        return other + self._binary_now()

    def __sub__(self, other: Any) -> Any:
        return self._binary_now() - _value_of(other)

    def __rsub__(self, other: Any) -> Any:
        return other - self._binary_now()

    def __mul__(self, other: Any) -> Any:
        return self._binary_now() * _value_of(other)

    def __rmul__(self, other: Any) -> Any:
        return other * self._binary_now()

    def __truediv__(self, other: Any) -> Any:
        return self._binary_now() / _value_of(other)

    def __rtruediv__(self, other: Any) -> Any:
        return other / self._binary_now()

    def __floordiv__(self, other: Any) -> Any:
        return self._binary_now() // _value_of(other)

    def __rfloordiv__(self, other: Any) -> Any:
        return other // self._binary_now()

    def __mod__(self, other: Any) -> Any:
        return self._binary_now() % _value_of(other)

    def __rmod__(self, other: Any) -> Any:
        return other % self._binary_now()

    def __pow__(self, other: Any) -> Any:
        return self._binary_now() ** _value_of(other)

    def __rpow__(self, other: Any) -> Any:
        return other ** self._binary_now()


def _value_of(x: Any) -> Any:
    """A Keyword's binary value (what it computes with), anything else as it is."""
    return x._binary_now() if isinstance(x, Operators) else x
