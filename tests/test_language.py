"""--lang resolution: names, codes, native names, aliases and BCP 47 tags; one-line errors otherwise."""

from __future__ import annotations

import re

import pytest

from babeltune.languages.language import close_matches, resolve_language
from babeltune.languages.profiles import load_profiles
from babeltune.errors import BabeltuneError

FORMS = {
    "mr": ["marathi", "Marathi", "MARATHI", " marathi ", "mr", "MR", "mar", "मराठी"],
    "hi": ["hindi", "Hindi", "hi", "hin", "हिन्दी", "हिंदी", "hi-IN", "hi-Latn"],
    "zh": ["Chinese", "Mandarin", "mandarin chinese", "zh", "zho", "chi", "cmn", "zh-Hans", "zh_Hant", "zh-Hant-TW",
           "中文", "汉语", "普通话"],
    "ja": ["Japanese", "ja", "jpn", "日本語", "ja-JP"],
    "ar": ["Arabic", "ar", "ara", "arb", "العربية", "Modern Standard Arabic", "ar-EG"],
    "sw": ["Swahili", "Kiswahili", "sw", "swa", "swh"],
    "uz": ["Uzbek", "uz", "uzb", "uzn", "oʻzbekcha", "ўзбекча", "uz-Cyrl"],
    "am": ["Amharic", "am", "amh", "አማርኛ"],
    "ur": ["Urdu", "ur", "urd", "اردو"],
    "fa": ["Persian", "Farsi", "fa", "fas", "pes", "per", "فارسی"],
    "tl": ["Tagalog", "Filipino", "tl", "tgl", "fil"],
    "or": ["Odia", "Oriya", "or", "ori", "ory", "ଓଡ଼ିଆ"],
    "bn": ["Bengali", "Bangla", "bn", "ben", "বাংলা"],
    "de": ["German", "Deutsch", "allemand", "de", "deu", "ger", "de-CH"],
    "pt": ["Portuguese", "português", "pt-BR", "pt-PT", "por"],
    "mai": ["Maithili", "mai", "मैथिली"],
}


@pytest.mark.parametrize("code, text", [(c, t) for c, forms in FORMS.items() for t in forms])
def test_accepted_forms_resolve(code, text):
    assert resolve_language(text).code == code


def test_every_profile_resolves_by_each_of_its_keys():
    for code, profile in load_profiles().items():
        for key in profile.lookup_keys():
            assert resolve_language(key).code == code, (code, key)


UNKNOWN = re.compile(
    r"^--lang: unknown language '(?P<text>[^']+)'; close matches: (?P<matches>.+) "
    r"\(use a name, an ISO 639-1/3 code or a native name; see lang_profiles/\)$"
)


@pytest.mark.parametrize(
    "typo, expected",
    [("maraathi", "Marathi (mr)"), ("marahti", "Marathi (mr)"), ("Swahilli", "Swahili (sw)"), ("urdoo", "Urdu (ur)"),
     ("Finish", "Finnish (fi)"), ("Korian", "Korean (ko)")],
)
def test_misspelt_language_lists_close_matches(typo, expected):
    with pytest.raises(BabeltuneError) as caught:
        resolve_language(typo)
    match = UNKNOWN.match(str(caught.value))
    assert match, str(caught.value)
    assert match["text"] == typo
    assert expected in match["matches"].split(", ")


def test_unknown_code_with_no_close_match_says_none():
    with pytest.raises(BabeltuneError) as caught:
        resolve_language("xyz")
    assert UNKNOWN.match(str(caught.value))
    assert "close matches: none" in str(caught.value)


@pytest.mark.parametrize(
    "text, name, code",
    [("eu", "Basque", "eu"), ("basque", "Basque", "eu"), ("euskara", "Basque", "eu"), ("yue", "Cantonese", "yue")],
)
def test_real_language_without_profile_names_it_and_the_file_to_add(text, name, code):
    with pytest.raises(BabeltuneError) as caught:
        resolve_language(text)
    message = str(caught.value)
    assert message.startswith(f"--lang: no profile for {name} ('{text}'); close matches: ")
    assert f"lang_profiles/{code}.yaml" in message and "\n" not in message


@pytest.mark.parametrize("text", ["", "   "])
def test_empty_language_is_an_error(text):
    with pytest.raises(BabeltuneError, match="--lang: empty language"):
        resolve_language(text)


def test_close_matches_are_unique_and_bounded():
    matches = close_matches("mara")
    assert matches and len(matches) == len(set(matches)) <= 5
    assert "Marathi (mr)" in matches
