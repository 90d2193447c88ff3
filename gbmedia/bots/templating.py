"""FILL's document templates: Jinja2 (text) and docxtpl (Word .docx), rendered in a child process.

A template is code its author wrote: loops, filters and string methods can ask for
gigabytes or hours (``{{ "x" * 10**10 }}``, nested loops over long lists) and Jinja2's
sandbox only stops access to Python's internals, not that. So the node never renders
one itself: ``python -m gbmedia.bots.templating`` renders it in a child process that
caps its own memory and CPU time (``setrlimit``) before it reads the template, and the
node kills it at the run's deadline. The protocol is one JSON object each way.

Fields are found as BASIC finds them (``{{ Name }}`` reads a field ``name``), a
missing field renders empty, and values render as TALK writes them.
"""

from __future__ import annotations

import base64
import io
import json
import sys
import zipfile
from typing import Any

from jinja2 import TemplateError, Undefined
from jinja2.runtime import Context
from jinja2.sandbox import SandboxedEnvironment
from jinja2.utils import missing

from gbmedia.bots.lib_data import field_of
from gbmedia.bots.values import to_text

MEMORY_BYTES = 512 * 1024 * 1024  # the child's address space: Python, Jinja2, python-docx and the template


class BasicContext(Context):
    """Names found as BASIC finds variables: ``{{ Name }}`` reads ``name`` when no ``Name`` is given."""

    def resolve_or_missing(self, key: str) -> Any:
        value = super().resolve_or_missing(key)
        if value is missing:
            wanted = key.casefold()
            value = next((v for k, v in self.parent.items() if k.casefold() == wanted), missing)
        return value


class BasicEnvironment(SandboxedEnvironment):
    """Jinja2's sandbox, reading objects' fields the way BASIC does."""

    context_class = BasicContext

    def getattr(self, obj: Any, attribute: str) -> Any:
        if isinstance(obj, dict):
            value = field_of(obj, attribute)
            return self.undefined(obj=obj, name=attribute) if value is None and attribute not in obj else value
        return super().getattr(obj, attribute)


def environment(autoescape: bool = False) -> BasicEnvironment:
    def finalize(value: Any) -> Any:
        return value if isinstance(value, Undefined) else to_text(value)

    return BasicEnvironment(finalize=finalize, autoescape=autoescape, keep_trailing_newline=True)


def render_text(template: str, data: Any) -> str:
    """A text template filled with ``data``'s fields."""
    return environment().from_string(template).render(data if isinstance(data, dict) else {"data": data})


def render_docx(template: bytes, data: Any) -> bytes:
    """A Word document template (docxtpl's Jinja2 tags in its text) filled with ``data``'s fields."""
    from docxtpl import DocxTemplate  # imported in the child only

    document = DocxTemplate(io.BytesIO(template))
    document.render(data if isinstance(data, dict) else {"data": data}, jinja_env=environment(), autoescape=True)
    out = io.BytesIO()
    document.save(out)
    return out.getvalue()


def render(request: dict[str, Any]) -> dict[str, Any]:
    """One request (``kind`` text or docx, ``template``, ``data``) to its answer: ``result`` or ``error``."""
    try:
        if request["kind"] == "docx":
            filled = render_docx(base64.b64decode(request["template"]), request["data"])
            return {"result": base64.b64encode(filled).decode()}
        return {"result": render_text(request["template"], request["data"])}
    except TemplateError as exc:
        return {"error": f"the template is not valid: {exc}"}
    except (KeyError, ValueError, OSError, zipfile.BadZipFile) as exc:  # docxtpl: not a Word document
        return {"error": f"the template cannot be filled: {type(exc).__name__}: {exc}"}


def main() -> None:  # pragma: no cover - runs in the child process (tests drive it through FILL)
    import resource

    cpu_seconds = max(1, int(float(sys.argv[1]) + 1)) if len(sys.argv) > 1 else 30
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_BYTES, MEMORY_BYTES))
    resource.setrlimit(resource.RLIMIT_CPU, (cpu_seconds, cpu_seconds))
    try:
        answer = render(json.loads(sys.stdin.buffer.read()))
    except MemoryError:
        answer = {"error": "the template needs more memory than a fill may use"}
    except RecursionError:
        answer = {"error": "the template recurses too deeply"}
    sys.stdout.write(json.dumps(answer))


if __name__ == "__main__":  # pragma: no cover
    main()
