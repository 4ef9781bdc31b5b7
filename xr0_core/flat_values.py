"""Values of flat keys, in and out: the one parser of run-config and site-policy values, the one TOML writer.

Run config (``train.batch-size``), site policy (``privacy.budget``) and the generated Flower app all hold flat
``section.key = value`` scalars that arrive as Python values (TOML, Flower's run config) or as strings
(``--set KEY=VALUE``, ``--node-config``). Both parsers read them through :func:`coerce`, so a value means the
same thing in either file:

=============  ===================================================================  ==========================
kind           accepted                                                             refused
=============  ===================================================================  ==========================
bool           ``True`` / ``False``; the strings ``true`` / ``false`` (any case,    ``1``, ``"yes"``, ``0``
               surrounding spaces ignored)
int            an int; a float or numeric string with an integral value            ``True``, ``3.5``, ``"3.5"``
               (``3.0``, ``"3"``, ``" 3.0 "``, ``"1e3"``)
float          an int or a float; a numeric string (``"3"``, ``"1e-5"``)            ``True``, ``"true"``
str            a string, as given                                                   ``5``, ``True``
tuple          a list / tuple of strings; a comma-separated string                  ``[1, 2]``
=============  ===================================================================  ==========================

Why "3.0" is an integer: a value written by a tool that only knows floats (JSON, a spreadsheet, TOML edited by
hand) still means 3; "3.5" has no integer meaning and is refused rather than truncated. Why "true" is a boolean
and nothing else: a flag typed as 1 or "yes" is more likely a mistake than a choice, so it is named.
"""

from __future__ import annotations

import math
from typing import Any

KIND_WORDS = {bool: "true or false", int: "an integer", float: "a number", str: "a string",
              tuple: "a list of strings"}


class ValueKindError(ValueError):
    """``value`` is not of ``kind``; callers turn it into their own error naming the key and the file."""

    def __init__(self, value: Any, kind: type) -> None:
        self.value, self.kind = value, kind
        super().__init__(f"{value!r} is not {KIND_WORDS.get(kind, kind.__name__)}")

    @property
    def expected(self) -> str:
        """What the key takes, in words ("an integer")."""
        return KIND_WORDS.get(self.kind, self.kind.__name__)


def coerce(value: Any, kind: type) -> Any:
    """``value`` as a ``kind`` (bool, int, float, str or tuple of str), by the rules of the module docstring.

    Raises
    ------
    ValueKindError
    """
    if kind is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in ("true", "false"):
            return value.strip().lower() == "true"
        raise ValueKindError(value, kind)
    if kind is int:
        number = _number(value, kind)
        if not math.isfinite(number) or number != int(number):
            raise ValueKindError(value, kind)
        return int(number) if not isinstance(value, int) else value
    if kind is float:
        return float(_number(value, kind))
    if kind is str:
        if not isinstance(value, str):
            raise ValueKindError(value, kind)
        return value
    if kind is tuple:
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
            raise ValueKindError(value, kind)
        return tuple(value)
    raise TypeError(f"no rule for values of kind {kind!r}")


def _number(value: Any, kind: type) -> float | int:
    if isinstance(value, bool):
        raise ValueKindError(value, kind)
    if isinstance(value, (int, float)):
        return value
    if isinstance(value, str):
        try:
            return float(value.strip())
        except ValueError:
            raise ValueKindError(value, kind) from None
    raise ValueKindError(value, kind)


def toml_value(value: Any) -> str:
    """A TOML literal of a flat value: ``true`` / ``false``, a number as Python writes it, a quoted string
    (backslashes and quotes escaped), a list of those for a tuple or list."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (tuple, list)):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'
