"""KTL's single-dash long options (``-service demo``, ``-terse``) for click commands.

KTL's ``show`` and ``modify`` spell long options with one dash.  click
would read ``-service demo`` as ``-s ervice`` and ``-terse`` as ``-t erse``,
so :class:`KtlCommand` rewrites those tokens to click's double-dash form
before click parses them.  Only the exact spellings a command declares are
rewritten; values (the token after an option that takes one, or after
``KW=`` / ``=`` in an assignment) and everything after ``--`` are left alone,
so ``modify KW= -5`` still writes ``-5`` and ``-t 1`` is still a timeout.
"""
from __future__ import annotations

from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Set

import click

__all__ = ["normalise", "KtlCommand"]


def normalise(args: Sequence[str], spellings: Mapping[str, str],
              takes_value: Iterable[str] = ()) -> List[str]:
    """``args`` with each KTL spelling (``-terse``) replaced by its click option.

    ``spellings`` maps a KTL token to the click option it means
    (``{"-terse": "--terse"}``); ``-service=demo`` becomes ``--service=demo``.
    ``takes_value`` names the options (either spelling) whose next token is
    a value and must not be rewritten.
    """
    valued: Set[str] = set(takes_value)
    out: List[str] = []
    skip_next = False
    for i, token in enumerate(args):
        if token == "--":
            out.extend(args[i:])
            break
        if skip_next:
            out.append(token)
            skip_next = False
            continue
        name, sep, value = token.partition("=")
        if token in spellings:
            token = spellings[token]
        elif sep and name in spellings and name.startswith("-"):
            token = f"{spellings[name]}={value}"
        out.append(token)
        if token in valued or (token.endswith("=") and not token.startswith("-")) \
                or token == "=":
            skip_next = True        # an option's value, or an assignment's (KW= value)
    return out


class KtlCommand(click.Command):
    """A click command that also takes KTL's single-dash long options.

    ``ktl_spellings`` maps each KTL token to one of the command's own
    options, e.g. ``{"-service": "--service", "-silent": "--quiet"}``.
    """

    def __init__(self, *args: Any, ktl_spellings: Optional[Dict[str, str]] = None,
                 **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.ktl_spellings: Dict[str, str] = dict(ktl_spellings or {})

    def parse_args(self, ctx: click.Context, args: List[str]) -> List[str]:
        return super().parse_args(ctx, normalise(args, self.ktl_spellings,
                                                 self._value_options()))

    def _value_options(self) -> Set[str]:
        """Every spelling of the options that take a value (-s, --timeout, -service...)."""
        names: Set[str] = set()
        for param in self.params:
            if isinstance(param, click.Option) and not param.is_flag and not param.count:
                names.update(param.opts)
        names.update(ktl for ktl, opt in self.ktl_spellings.items() if opt in names)
        return names
