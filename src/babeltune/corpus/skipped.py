"""What the corpus reader reports for each file it skipped, or skipped records of, or cut."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional


@dataclass
class SkippedFile:
    """What the corpus reader left out of one file or changed in it: the whole file (kind "file"),
    ``count`` records of it (kind "records": lines with undecodable bytes, malformed rows, ...), or
    ``count`` documents it cut into pieces (kind "cut": nothing dropped)."""

    path: str
    reason: str                   # e.g. "binary file", "invalid UTF-8 at byte 1234"
    offset: Optional[int] = None  # byte offset of the (first) bad byte or record
    kind: str = "file"            # "file" | "records" | "cut"
    count: int = 0                # records skipped / documents cut
    unit: str = "line"            # what a record is here: "line" or "row"
    line: Optional[int] = None    # 1-based line of the first skipped record
    bytes: int = 0                # bytes in the skipped records
    lines: int = 0                # lines they spanned (a malformed CSV row can span several)

    def describe(self) -> str:
        """One line for the user (a path holding a line break or other odd character is quoted)."""
        path = self.path if self.path.isprintable() else repr(self.path)
        if self.kind == "cut":
            return f"{path}: {self.reason}"
        if self.kind == "records":
            first = ", ".join(part for part in (f"line {self.line}" if self.line else "",
                                                f"byte {self.offset}" if self.offset is not None else "") if part)
            size = f"{self.bytes:,} bytes; " if self.bytes else ""
            size += f"{self.lines:,} lines; " if self.lines > self.count else ""
            return (f"{path}: skipped {self.count:,} {self.unit}{'s' if self.count != 1 else ''} "
                    f"({self.reason}; {size}first at {first or 'unknown position'})")
        where = f" at byte {self.offset}" if self.offset is not None and "byte" not in self.reason else ""
        return f"{path}: skipped the whole file ({self.reason}{where})"
