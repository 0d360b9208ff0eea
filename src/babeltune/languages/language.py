"""Resolve what the user typed after ``--lang`` to a language profile.

Accepted: an English name ("Marathi", "marathi"), an ISO 639-1 or 639-3 code ("mr", "mar"), the
native name ("मराठी"), any alias of a profile ("Bangla", "Farsi", "Filipino"), a BCP 47 tag that
langcodes can parse ("zh-Hans", "pt-BR", "cmn") and a language name in any language that CLDR
knows ("Deutsch", "allemand"). Anything else is a one-line BabeltuneError with close matches.
"""

from __future__ import annotations

import difflib
import functools
from typing import Callable, Optional

import langcodes

from babeltune.languages.profiles import LangProfile, load_profiles, normalize_key
from babeltune.errors import BabeltuneError

HOW_TO_FIX = "use a name, an ISO 639-1/3 code or a native name; see lang_profiles/"
MAX_SUGGESTIONS = 5


@functools.cache
def _lookup_table() -> dict[str, str]:
    """Normalized name/code/alias -> profile code (uniqueness is checked when profiles load)."""
    table: dict[str, str] = {}
    for code, profile in load_profiles().items():
        for key in profile.lookup_keys():
            table[normalize_key(key)] = code
    return table


def _code_from_tag(text: str) -> str | None:
    """Language subtag of a BCP 47 tag ('zh-Hans' -> 'zh', 'arb' -> 'ar'), or None if not a tag."""
    try:
        # macro=True folds individual languages into their macrolanguage (cmn -> zh, swh -> sw).
        return langcodes.Language.get(langcodes.standardize_tag(text.strip(), macro=True)).language
    except (ValueError, LookupError):
        return None


def _code_from_name(text: str) -> str | None:
    """Language code for a name in any CLDR language ('Deutsch', 'allemand'), or None."""
    try:
        found = langcodes.find(text.strip())
    except LookupError:
        return None
    return _code_from_tag(str(found))


def _known_to_langcodes(code: str) -> str | None:
    """English display name langcodes has for a code it knows, else None (e.g. for 'xyz')."""
    language = langcodes.Language.get(code)
    if not language.is_valid():
        return None
    name = language.display_name()
    return None if name.lower().startswith("unknown language") else name


def close_matches(text: str) -> list[str]:
    """Up to five profiles whose names, codes or aliases look like ``text``, as 'Name (code)'."""
    table = _lookup_table()
    profiles = load_profiles()
    suggestions: list[str] = []
    for key in difflib.get_close_matches(normalize_key(text), list(table), n=4 * MAX_SUGGESTIONS, cutoff=0.6):
        profile = profiles[table[key]]
        label = f"{profile.name} ({profile.code})"
        if label not in suggestions:
            suggestions.append(label)
    return suggestions[:MAX_SUGGESTIONS]


def _unknown_language_error(text: str, known_code: str | None) -> BabeltuneError:
    matches = close_matches(text)
    listed = ", ".join(matches) if matches else "none"
    known_as = _known_to_langcodes(known_code) if known_code else None
    if known_as:
        return BabeltuneError(
            f"--lang: no profile for {known_as} ('{text}'); close matches: {listed} "
            f"(add lang_profiles/{known_code}.yaml as described in lang_profiles/README.md, or {HOW_TO_FIX})"
        )
    return BabeltuneError(f"--lang: unknown language '{text}'; close matches: {listed} ({HOW_TO_FIX})")


def resolve_language(text: str, note: Optional[Callable[[str], None]] = None) -> LangProfile:
    """The profile for a language name, code, native name, alias or BCP 47 tag. A name matched only
    approximately (CLDR's name search also matches 'marathii') is said through ``note``:
    "taking 'marathii' as Marathi"."""
    if not text or not text.strip():
        raise BabeltuneError(f"--lang: empty language; give one, e.g. --lang marathi ({HOW_TO_FIX})")
    profiles = load_profiles()
    table = _lookup_table()
    direct = table.get(normalize_key(text))
    if direct:
        return profiles[direct]
    tag_code, name_code = _code_from_tag(text), _code_from_name(text)
    for code in (tag_code, name_code):
        if code and normalize_key(code) in table:
            profile = profiles[table[normalize_key(code)]]
            if code != tag_code and note is not None and not _is_exact_name(text, code):
                note(f"taking {text.strip()!r} as {profile.name}")
            return profile
    # langcodes' name search also matches by prefix ('maraathi' -> Marra): only name a language without a
    # profile in the error when the user typed its code or its exact name.
    if name_code and not _is_exact_name(text, name_code):
        name_code = None
    raise _unknown_language_error(text.strip(), tag_code or name_code)


def _is_exact_name(text: str, code: str) -> bool:
    language = langcodes.Language.get(code)
    return normalize_key(text) in {normalize_key(language.display_name()), normalize_key(language.autonym())}


def resolve_language_code(text: str) -> str:
    """Convenience for callers that only need the profile code."""
    return resolve_language(text).code
