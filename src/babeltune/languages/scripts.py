"""Which writing systems a corpus uses: share of letters per Unicode script, via `regex` \\p{Script=…}."""

from __future__ import annotations

import functools
from collections import Counter
from typing import Iterable

import regex

# Unicode script names as `regex` spells them (Unicode 17). Names that an older `regex` does not know
# are dropped at import time (see _script_patterns), so the list may safely run ahead of the library.
SCRIPT_NAMES = (
    'Adlam', 'Ahom', 'Anatolian_Hieroglyphs', 'Arabic', 'Armenian', 'Avestan', 'Balinese', 'Bamum',
    'Bassa_Vah', 'Batak', 'Bengali', 'Beria_Erfe', 'Bhaiksuki', 'Bopomofo', 'Brahmi', 'Braille', 'Buginese',
    'Buhid', 'Canadian_Aboriginal', 'Carian', 'Caucasian_Albanian', 'Chakma', 'Cham', 'Cherokee',
    'Chorasmian', 'Coptic', 'Cuneiform', 'Cypriot', 'Cypro_Minoan', 'Cyrillic', 'Deseret',
    'Devanagari', 'Dives_Akuru', 'Dogra', 'Duployan', 'Egyptian_Hieroglyphs', 'Elbasan', 'Elymaic',
    'Ethiopic', 'Garay', 'Georgian', 'Glagolitic', 'Gothic', 'Grantha', 'Greek', 'Gujarati', 'Gunjala_Gondi',
    'Gurmukhi', 'Gurung_Khema', 'Han', 'Hangul', 'Hanifi_Rohingya', 'Hanunoo', 'Hatran', 'Hebrew', 'Hiragana',
    'Imperial_Aramaic', 'Inscriptional_Pahlavi', 'Inscriptional_Parthian', 'Javanese', 'Kaithi',
    'Kannada', 'Katakana', 'Kawi', 'Kayah_Li', 'Kharoshthi', 'Khitan_Small_Script', 'Khmer', 'Khojki',
    'Khudawadi', 'Kirat_Rai', 'Lao', 'Latin', 'Lepcha', 'Limbu', 'Linear_A', 'Linear_B', 'Lisu', 'Lycian',
    'Lydian', 'Mahajani', 'Makasar', 'Malayalam', 'Mandaic', 'Manichaean', 'Marchen', 'Masaram_Gondi',
    'Medefaidrin', 'Meetei_Mayek', 'Mende_Kikakui', 'Meroitic_Cursive', 'Meroitic_Hieroglyphs', 'Miao',
    'Modi', 'Mongolian', 'Mro', 'Multani', 'Myanmar', 'Nabataean', 'Nag_Mundari', 'Nandinagari',
    'New_Tai_Lue', 'Newa', 'Nko', 'Nushu', 'Nyiakeng_Puachue_Hmong', 'Ogham', 'Ol_Chiki', 'Ol_Onal',
    'Old_Hungarian', 'Old_Italic', 'Old_North_Arabian', 'Old_Permic', 'Old_Persian', 'Old_Sogdian',
    'Old_South_Arabian', 'Old_Turkic', 'Old_Uyghur', 'Oriya', 'Osage', 'Osmanya', 'Pahawh_Hmong', 'Palmyrene',
    'Pau_Cin_Hau', 'Phags_Pa', 'Phoenician', 'Psalter_Pahlavi', 'Rejang', 'Runic', 'Samaritan', 'Saurashtra',
    'Sharada', 'Shavian', 'Siddham', 'Sidetic', 'SignWriting', 'Sinhala', 'Sogdian', 'Sora_Sompeng',
    'Soyombo', 'Sundanese', 'Sunuwar', 'Syloti_Nagri', 'Syriac', 'Tagalog', 'Tagbanwa', 'Tai_Le', 'Tai_Tham',
    'Tai_Viet', 'Tai_Yo', 'Takri', 'Tamil', 'Tangsa', 'Tangut', 'Telugu', 'Thaana', 'Thai', 'Tibetan',
    'Tifinagh', 'Tirhuta', 'Todhri', 'Tolong_Siki', 'Toto', 'Tulu_Tigalari', 'Ugaritic', 'Vai',
    'Vithkuqi', 'Wancho', 'Warang_Citi', 'Yezidi', 'Yi', 'Zanabazar_Square',
    'Common', 'Inherited',  # last: only letters that belong to no script above land here
)

# Scripts written without spaces between words: whitespace "words" mean nothing there, so no word
# counts or fertility are reported (Han/kana: Chinese, Japanese; the Southeast Asian abugidas).
NON_SPACED_SCRIPTS = frozenset({
    "Han", "Hiragana", "Katakana", "Bopomofo", "Thai", "Lao", "Khmer", "Myanmar", "Tibetan", "Yi",
    "Javanese", "Balinese", "Sundanese", "New_Tai_Lue", "Tai_Tham", "Tai_Le", "Tai_Viet", "Nushu", "Tangut",
})

_LETTER = regex.compile(r"\p{L}")


@functools.lru_cache(maxsize=1)
def _script_patterns() -> tuple[tuple[str, "regex.Pattern"], ...]:
    patterns = []
    for name in SCRIPT_NAMES:
        try:
            patterns.append((name, regex.compile(r"\p{Script=%s}" % name)))
        except regex.error:  # script newer than the installed regex's Unicode tables
            continue
    return tuple(patterns)


@functools.lru_cache(maxsize=65536)
def script_of(char: str) -> str:
    """Unicode script name of one character ("Devanagari", "Latin", ...), or "Unknown"."""
    for name, pattern in _script_patterns():
        if pattern.match(char):
            return name
    return "Unknown"


def letter_counts_by_script(texts: Iterable[str]) -> Counter:
    """Number of letters (\\p{L}) per script over ``texts``.

    Counting distinct characters first (Counter runs in C) keeps the per-script regex work to one
    match per distinct letter instead of one per character."""
    chars: Counter = Counter()
    for text in texts:
        chars.update(text)
    by_script: Counter = Counter()
    for char, count in chars.items():
        if _LETTER.match(char):
            by_script[script_of(char)] += count
    return by_script


def script_mix(texts: Iterable[str], top: int = 8) -> dict[str, float]:
    """Share of letters per script, largest first; the rest beyond ``top`` summed as "Other"."""
    counts = letter_counts_by_script(texts)
    total = sum(counts.values())
    if not total:
        return {}
    ranked = counts.most_common()
    mix = {name: round(n / total, 4) for name, n in ranked[:top] if n / total >= 0.0001}
    rest = total - sum(n for name, n in ranked if name in mix)
    if round(rest / total, 4) > 0:
        mix["Other"] = round(rest / total, 4)
    return mix


def mostly_space_delimited(mix: dict[str, float]) -> bool:
    """True unless most letters belong to scripts written without spaces between words."""
    unspaced = sum(share for name, share in mix.items() if name in NON_SPACED_SCRIPTS)
    return unspaced < 0.5
