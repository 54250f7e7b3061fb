"""Any reader, with the numerical encodings the config chose (`data.numerical`).

Kept apart from the readers so every source with numerical fields (Criteo, tables, the
synthetic generator) gets the choice the same way, and the choice is part of the
fingerprint: a cache of one encoding is never reused for another.
"""

from __future__ import annotations

from dataclasses import replace

from serving.encodings import LOG, Encoding
from trainer.data.readers.base import FieldDecl, Reader, Wrapped

EVERY = "*"  # the key that sets every numerical field the config does not name


class Encoded(Wrapped):
    """A reader whose numerical fields carry their configured (unfitted) encodings.

    Args:
        reader: the wrapped reader.
        encodings: numerical field name → encoding; the key "*" sets every numerical
            field not named; fields not covered keep "log".

    Raises:
        ValueError: a name that is not a numerical field of the reader.
    """

    def __init__(self, reader: Reader, encodings: dict[str, Encoding]):
        super().__init__(reader)
        decls = reader.fields()
        numerical = [d.name for d in decls if d.kind == "numerical"]
        unknown = [n for n in encodings if n != EVERY and n not in numerical]
        if unknown:
            raise ValueError(
                f"data.numerical: {unknown} are not numerical fields of {reader.dataset_id} "
                f"(its numerical fields: {numerical or 'none'})"
            )
        default = encodings.get(EVERY, LOG)
        self._decls = [replace(d, encoding=encodings.get(d.name, default)) if d.name in numerical else d for d in decls]

    def fields(self) -> list[FieldDecl]:
        return list(self._decls)

    def fingerprint(self) -> str:
        chosen = ",".join(f"{d.name}={d.encoding}" for d in self._decls if d.encoding != LOG)
        # all "log" is what the bare reader does: same rows, same cache
        return f"{self.inner.fingerprint()}|numerical={chosen}" if chosen else self.inner.fingerprint()
