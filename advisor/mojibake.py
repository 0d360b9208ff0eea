"""Encoding damage ("mojibake"): UTF-8 text that was once decoded with a single-byte code page and saved
again, so that every character became two to four others. 'मराठी' read as Windows-1251 becomes
'Р°В¤В®...'-like Cyrillic garbage ('а¤®а¤°а¤ѕа¤ а»Ђ'), read as Windows-1252/Latin-1 'à¤®à¤°à¤¾à¤\xa0à¥€';
'é' becomes 'Ã©'.

A run of characters from those code pages is damage when encoding it back with the code page gives valid
UTF-8 that holds a letter: that is the repair itself (as ftfy does it), so a match is never a guess. Runs
of genuine Russian or French text do not survive it (two lead bytes in a row are not UTF-8); Windows-1251
runs must be at least three characters, because a Cyrillic capital followed by 'і' or 'ї' (as in Ukrainian
'Ці') is valid two-byte UTF-8. The repaired run's script (regex \\p{Script}) says what was meant.
"""

from __future__ import annotations

from collections import Counter
from typing import Optional

import regex

CODE_PAGES = ("cp1252", "latin-1", "cp1251")
MIN_RUN = {"cp1252": 2, "latin-1": 2, "cp1251": 3}
EXAMPLES = 3
EXAMPLE_CHARS = 24

# Every non-ASCII character the three code pages can show: Latin-1 (U+0080-U+00FF, C1 controls included),
# Windows-1252's extras, Windows-1251's Cyrillic and its extras.
_CP1252_EXTRA = "€‚ƒ„…†‡ˆ‰Š‹ŒŽ‘’“”•–—˜™š›œžŸ"
_CP1251_EXTRA = "ЂЃ‚ѓ„…†‡€‰Љ‹ЊЌЋЏђ‘’“”•–—™љ›њќћџЎўЈҐЁЄЇІіґёєјЅѕї№"
_RUN = regex.compile("[\u0080-\u00ff\u0410-\u044f" + regex.escape(_CP1252_EXTRA + _CP1251_EXTRA) + "]{2,}")
_LETTER = regex.compile(r"\p{L}")
# A UTF-8 lead byte shown by the code page, followed by a continuation byte shown by it: every damaged run
# holds one, most genuine text none (one C-level scan per document before any repair is tried).
_CONTINUATION_1252 = "\u0080-\u00bf" + regex.escape(_CP1252_EXTRA)
_CONTINUATION_1251 = regex.escape("ЂЃ‚ѓ„…†‡€‰Љ‹ЊЌЋЏђ‘’“”•–—™љ›њќћџ\u00a0ЎўЈ¤Ґ¦§Ё©Є«¬\u00ad®Ї°±Ііґµ¶·ё№є»јЅѕї")
_SUSPECT = regex.compile(f"[\u00c2-\u00f4][{_CONTINUATION_1252}]|[\u0412-\u0444][{_CONTINUATION_1251}]")


def repair_run(run: str) -> Optional[tuple[str, str]]:
    """(repaired text, code page) when ``run`` is UTF-8 bytes shown through a single-byte code page."""
    for code_page in CODE_PAGES:
        if len(run) < MIN_RUN[code_page]:
            continue
        try:
            repaired = run.encode(code_page).decode("utf-8")
        except (UnicodeEncodeError, UnicodeDecodeError):
            continue
        if _LETTER.search(repaired):
            return repaired, code_page
    return None


def damaged_runs(document: str) -> list[tuple[str, str, str]]:
    """(damaged run, repair, code page) for every damaged run of one document."""
    found = []
    for match in _RUN.finditer(document):
        if not _SUSPECT.search(match.group()):
            continue
        repaired = repair_run(match.group())
        if repaired is not None:
            found.append((match.group(), *repaired))
    return found


def script_of(text: str) -> Optional[str]:
    """The most common script of the letters of ``text`` (regex \\p{Script} names), or None."""
    from babeltune.languages.scripts import letter_counts_by_script

    counts = letter_counts_by_script([text])
    return counts.most_common(1)[0][0] if counts else None


def find_mojibake(documents: list[str], *, sampled: bool) -> dict:
    """Count the documents holding damaged runs; up to EXAMPLES examples (damaged -> repaired)."""
    damaged, code_pages, scripts, examples = 0, Counter(), Counter(), []
    for document in documents:
        if not _SUSPECT.search(document):     # the usual case: one C-level scan per document
            continue
        runs = damaged_runs(document)
        if not runs:
            continue
        damaged += 1
        code_pages.update(page for _, _, page in runs)
        scripts.update(filter(None, (script_of(fixed) for _, fixed, _ in runs[:3])))
        if len(examples) < EXAMPLES:
            run, fixed, page = max(runs, key=lambda r: len(r[0]))
            examples.append({"damaged": run[:EXAMPLE_CHARS], "repaired": fixed[:EXAMPLE_CHARS], "code_page": page})
    return {
        "documents": damaged,
        "checked": len(documents),
        "share": round(damaged / len(documents), 6) if documents else 0.0,
        "sampled": sampled,
        "code_pages": dict(code_pages.most_common()),
        "meant_scripts": dict(scripts.most_common()),
        "examples": examples,
    }


def warning_line(found: dict, total_documents: int) -> Optional[str]:
    """The note `advise` prints, or None when nothing is damaged."""
    if not found or not found.get("documents"):
        return None
    count, checked = found["documents"], found["checked"]
    scope = (f"{count:,} of {checked:,} sampled documents ({found['share']:.1%}; about "
             f"{round(found['share'] * total_documents):,} of {total_documents:,})" if found["sampled"]
             else f"{count:,} of {checked:,} documents ({found['share']:.1%})")
    pages = "/".join(found["code_pages"])
    meant = "/".join(found["meant_scripts"]) or "other"
    example = found["examples"][0]
    return (f"warning: encoding damage (mojibake) in {scope}: UTF-8 {meant} text once read as {pages} and saved "
            f"again, e.g. {example['damaged']!r} is {example['repaired']!r}; repair those files (e.g. "
            "ftfy's fix_text, or re-export them as UTF-8) or remove those lines before training")


__all__ = ["damaged_runs", "find_mojibake", "repair_run", "warning_line"]
