"""Where a service's keywords come from: keyword files, KTL XML declarations, setup code.

In that order, so that ``setup`` can attach hooks to keywords a file made,
keywords created in code take what they leave unsaid from their XML
declaration, and declared keywords nobody created are still served.
"""
from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Optional, Sequence, Union

if TYPE_CHECKING:
    from .service import Service

__all__ = ["populate"]

PathLike = Union[str, "os.PathLike[str]"]
Paths = Union[PathLike, Sequence[PathLike], None]


def populate(svc: "Service", setup: Optional[Callable[["Service"], Any]],
             keywords: Paths, xml: Paths) -> None:
    """Fill ``svc``: its :attr:`~.service.Service.declarations`, then the keyword
    files' keywords, then ``setup(svc)``, then the declared keywords still missing.

    KTL XML among the keyword files is taken as ``xml``.
    """
    from ..ktlxml import is_bundle_path
    files = _paths(keywords) if keywords is not None else []
    bundles = [path for path in files if is_bundle_path(path)]
    if bundles:
        xml = _paths(xml) + bundles if xml is not None else bundles
    svc.declarations = _find_declarations(svc, xml)
    if files:
        from ..keywordfile import load_keywords
        for path in files:
            if path not in bundles:
                load_keywords(svc, path)
    if setup is not None:
        setup(svc)
    _serve_declared(svc)


def _find_declarations(svc: "Service", xml: Paths) -> Dict[str, Any]:
    """The XML declarations: ``xml``, else ``[zmq] xml-dir``, else ``$RELDIR/data/<svc>``."""
    from .. import ktlxml
    if xml is not None:
        sources = _paths(xml)
    elif svc.config.zmq.xml_dir is not None:
        sources = [svc.config.zmq.xml_dir]
    else:
        found = ktlxml.service_directory(svc.name)
        sources = [found] if found else []
    declarations = ktlxml.load_declarations(sources, svc.name) if sources else {}
    if declarations:
        svc.log.info("%d keyword(s) declared in KTL XML (%s)", len(declarations),
                     ", ".join(os.fspath(p) for p in sources))
    return declarations


def _serve_declared(svc: "Service") -> None:
    """Keywords declared in XML but not created in code: plain keywords of their type.

    When bundles name dispatchers (``<dispatcher><name>``) and one of
    them is this dispatcher, only its bundles' keywords are added: the
    others belong to the service's other dispatchers.
    """
    from ..keywords import keyword_class
    mine = [d for d in svc.declarations.values() if d.dispatcher == svc.dispatcher]
    for declaration in mine or list(svc.declarations.values()):
        if declaration.name not in svc._keywords:
            keyword_class(declaration.type)(declaration.name, svc)


def _paths(value: Any) -> List[Any]:
    """One path or a sequence of them, as a list."""
    if isinstance(value, (str, bytes, os.PathLike)):
        return [value]
    return list(value)
