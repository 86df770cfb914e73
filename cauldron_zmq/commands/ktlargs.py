"""KTL's single-dash long options (``-service demo``, ``-terse``) for click commands.

KTL's ``show`` and ``modify`` spell long options with one dash.  click
would read ``-service demo`` as ``-s ervice`` and ``-terse`` as ``-t erse``,
so :class:`KtlCommand` rewrites those tokens to click's double-dash form
before click parses them.  Only the exact spellings a command declares are
rewritten; an option's value and everything after ``--`` are left alone, and
``modify`` joins an assignment's pieces first, so ``modify KW= -terse`` writes
``-terse`` and ``-t 1`` is still a timeout.
"""
from __future__ import annotations

from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Set

import click

__all__ = ["normalise", "KtlCommand"]


def normalise(args: Sequence[str], spellings: Mapping[str, str],
              takes_value: Iterable[str] = (), join_assignments: bool = False) -> List[str]:
    """``args`` with each KTL spelling (``-terse``) replaced by its click option.

    ``spellings`` maps a KTL token to the click option it means
    (``{"-terse": "--terse"}``); ``-service=demo`` becomes ``--service=demo``.
    ``takes_value`` names the options (either spelling) whose next token is
    a value and must not be rewritten.  ``join_assignments`` (``modify``)
    joins the shell's pieces of an assignment (``KW= -5``, ``KW = x``,
    ``KW =x``) into one ``KW=value`` token, so that click never takes a value
    such as ``-terse`` or ``-t1`` for an option.
    """
    valued: Set[str] = set(takes_value)
    out: List[str] = []
    after_name = False          # out[-1] is a bare positional word (KW of 'KW = value')
    i = 0
    while i < len(args):
        token = args[i]
        if token == "--":
            out.extend(args[i:])
            break
        if token.startswith("-") and len(token) > 1:
            token = _spelled(token, spellings)
            out.append(token)
            if token in valued and i + 1 < len(args):
                out.append(args[i + 1])          # the option's value, as it is
                i += 1
            after_name = False
        elif join_assignments and token.startswith("=") and after_name:
            value = token[1:]
            if value == "" and i + 1 < len(args):        # KW = value
                value, i = args[i + 1], i + 1
            out[-1] = f"{out[-1]}={value}"               # KW =value
            after_name = False
        elif join_assignments and _open_assignment(token) and i + 1 < len(args):
            out.append(token + args[i + 1])               # KW= value
            i += 1
            after_name = False
        else:
            out.append(token)
            after_name = "=" not in token
        i += 1
    return out


def _spelled(token: str, spellings: Mapping[str, str]) -> str:
    if token in spellings:
        return spellings[token]
    name, sep, value = token.partition("=")
    if sep and name in spellings:
        return f"{spellings[name]}={value}"
    return token


def _open_assignment(token: str) -> bool:
    """'KW=': a name, and the value in the next token."""
    name, sep, value = token.partition("=")
    return bool(name) and bool(sep) and value == ""


class KtlCommand(click.Command):
    """A click command that also takes KTL's single-dash long options.

    ``ktl_spellings`` maps each KTL token to one of the command's own
    options, e.g. ``{"-service": "--service", "-silent": "--quiet"}``.
    """

    def __init__(self, *args: Any, ktl_spellings: Optional[Dict[str, str]] = None,
                 join_assignments: bool = False, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.ktl_spellings: Dict[str, str] = dict(ktl_spellings or {})
        self.join_assignments = join_assignments

    def parse_args(self, ctx: click.Context, args: List[str]) -> List[str]:
        return super().parse_args(ctx, normalise(args, self.ktl_spellings,
                                                 self._value_options(),
                                                 self.join_assignments))

    def _value_options(self) -> Set[str]:
        """Every spelling of the options that take a value (-s, --timeout, -service...)."""
        names: Set[str] = set()
        for param in self.params:
            if isinstance(param, click.Option) and not param.is_flag and not param.count:
                names.update(param.opts)
        names.update(ktl for ktl, opt in self.ktl_spellings.items() if opt in names)
        return names
