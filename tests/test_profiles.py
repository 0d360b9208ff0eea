"""Every language profile validates against the schema and agrees with langcodes, regex and py3langid;
the parallel reference text is really aligned with English."""

from __future__ import annotations

import re
import unicodedata
from pathlib import Path

import langcodes
import pytest
import regex

from babeltune.languages.profiles import (
    LangProfile,
    _check_unique_keys,
    english_reference_lines,
    get_profile,
    load_profiles,
    parse_profile,
    reference_lines,
)
from babeltune.errors import BabeltuneError

PROFILE_DIR = Path(__file__).resolve().parents[1] / "lang_profiles"
PROFILE_FILES = sorted(PROFILE_DIR.glob("*.yaml"))
SHARED = Path(__file__).resolve().parents[2] / "shared"

# Languages named in the tables and text of ../shared/seeds/ (the guide's morphology/corpus table lists
# English, Spanish, French, Mandarin, Japanese, Korean, Arabic, Hindi, Marathi; its prose adds Chinese,
# Swahili, Uzbek, Urdu, Amharic, Finnish, Turkish; the AutoGluon tutorial evaluates German and Japanese).
# Kept here because CI clones have no ../shared; test_seed_tables_are_covered re-reads them when present.
SEED_LANGUAGES = {
    "English": "en", "Spanish": "es", "French": "fr", "Mandarin": "zh", "Chinese": "zh", "Japanese": "ja",
    "Korean": "ko", "Arabic": "ar", "Hindi": "hi", "Marathi": "mr", "Urdu": "ur", "Swahili": "sw",
    "Uzbek": "uz", "Amharic": "am", "Finnish": "fi", "Turkish": "tr", "German": "de",
}
# Languages of ../shared/corpora/ud/ (file stem -> profile code); PUD files are parallel.
UD_LANGUAGES = ["ar", "de", "en", "es", "fi", "fr", "hi", "ja", "ko", "mr", "ru", "tr", "ur", "zh"]
PUD_LANGUAGES = {"ar", "de", "en", "es", "fi", "fr", "hi", "ko", "ru", "tr", "zh"}
UNSPACED = {"zh", "ja", "th", "lo", "km", "my"}


def valid_profile_dict(**changes) -> dict:
    data = get_profile("mr").model_dump(mode="json")
    data.update(changes)
    return data


def as_yaml(data: dict) -> str:
    import yaml

    return yaml.safe_dump(data, allow_unicode=True)


@pytest.mark.parametrize("path", PROFILE_FILES, ids=lambda p: p.stem)
def test_every_profile_file_validates(path):
    profile = parse_profile(path.read_text(encoding="utf-8"), path.name)
    assert profile.code == path.stem
    assert profile.sources and any("Joshi" in s for s in profile.sources)
    for script in profile.scripts:
        regex.compile(r"\p{Script=%s}" % script)


def test_there_are_enough_profiles_and_all_load():
    profiles = load_profiles()
    assert len(PROFILE_FILES) >= 45
    assert set(profiles) == {p.stem for p in PROFILE_FILES}
    assert all(isinstance(p, LangProfile) for p in profiles.values())
    profiles.pop("en")  # callers get a copy: the cache stays intact
    assert "en" in load_profiles()


def test_seed_and_ud_languages_have_profiles():
    profiles = load_profiles()
    for name, code in SEED_LANGUAGES.items():
        assert code in profiles, name
    for code in UD_LANGUAGES:
        assert code in profiles
    for group in (["bn", "ta", "te", "kn", "ml", "gu", "pa", "or", "as", "ne", "si", "sa"],
                  ["ha", "yo", "ig", "zu", "xh", "so", "am", "rw"],
                  ["th", "vi", "id", "ms", "tl", "my", "km", "lo", "jv"]):
        assert set(group) <= set(profiles)


@pytest.mark.skipif(not (SHARED / "seeds").is_dir(), reason="../shared/seeds is not present (CI clone)")
def test_seed_tables_are_covered():
    """Re-read the language tables of the seeds: every language in a table row resolves to a profile."""
    from babeltune.languages.language import resolve_language

    names = set()
    for path in (SHARED / "seeds").glob("*.txt"):
        for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if line.lstrip().startswith("|") and len(cells) == 3 and cells[1].lower().startswith(("simple", "complex")):
                names.add(cells[0])
    assert len(names) >= 9
    assert {resolve_language(name).code for name in names} <= set(load_profiles())


def test_shipped_ud_files_have_profiles():
    """Every whole UD file shipped in tests/data/ud (the reference figures' text) has a language profile."""
    shipped = sorted((Path(__file__).parent / "data" / "ud").glob("*.txt"))
    assert len(shipped) >= 10
    for path in shipped:
        assert path.stem.split("-")[0] in load_profiles(), path.name


def test_codes_agree_with_langcodes():
    for profile in load_profiles().values():
        # the 639-3 code and the file's code name the same language once macrolanguages are folded
        assert langcodes.standardize_tag(profile.iso639_3, macro=True) == langcodes.standardize_tag(profile.code, macro=True)
        if profile.iso639_1 is None:
            assert langcodes.Language.get(profile.iso639_3).language == profile.code
        assert langcodes.Language.get(profile.code).is_valid()


def test_native_name_is_written_in_the_profile_scripts():
    for profile in load_profiles().values():
        allowed = "".join(r"\p{Script=%s}" % s for s in profile.scripts)
        stray = regex.sub(r"[%s\p{Common}\p{Inherited}\s]" % allowed, "", profile.native_name)
        assert stray == "", (profile.code, stray)


def test_langid_codes_match_py3langid():
    from py3langid.langid import MODEL_FILE, LanguageIdentifier

    labels = set(LanguageIdentifier.from_model_file(MODEL_FILE).nb_classes)
    for profile in load_profiles().values():
        if profile.langid_code is None:
            # a null langid_code must mean py3langid really lacks the language
            assert profile.code not in labels and profile.iso639_3 not in labels, profile.code
        else:
            assert profile.langid_code in labels, profile.code


def test_space_delimited_and_classes_are_plausible():
    profiles = load_profiles()
    assert {c for c, p in profiles.items() if not p.space_delimited} == UNSPACED
    assert profiles["en"].resource_class == 5 and profiles["zh"].resource_class == 5
    assert profiles["mr"].resource_class < profiles["hi"].resource_class < profiles["en"].resource_class
    for profile in profiles.values():
        if not any("Joshi" in note and "best reading" in note for note in profile.notes):
            # classes stated in the paper itself: only these may go without a "best reading" note
            assert profile.code in {"en", "es", "de", "ja", "fr", "ar", "zh", "ru", "vi", "nl", "ko", "id", "uk",
                                    "af", "he", "zu", "lo"}, profile.code


def test_reference_files_are_declared_for_pud_languages_only():
    profiles = load_profiles()
    assert {c for c, p in profiles.items() if p.reference} == PUD_LANGUAGES
    assert reference_lines(profiles["mr"]) is None
    shipped = {p.stem for p in (PROFILE_DIR / "reference").glob("*.txt")}
    assert shipped == PUD_LANGUAGES
    total = sum(p.stat().st_size for p in (PROFILE_DIR / "reference").iterdir())
    assert total < 2 * 1024 * 1024


def _four_digit_numbers(line: str) -> set[str]:
    # unicodedata.digit folds Arabic-Indic and other native digits to 0-9
    return {"".join(str(unicodedata.digit(ch)) for ch in m) for m in regex.findall(r"\d{4}", line)}


def _number_agreement(english: list[str], other: list[str]) -> float:
    pairs = [(a, b) for a, b in zip(english, other) if _four_digit_numbers(a)]
    return sum(_four_digit_numbers(a) <= _four_digit_numbers(b) for a, b in pairs) / len(pairs)


@pytest.mark.parametrize("code", sorted(PUD_LANGUAGES))
def test_reference_lines_are_aligned_with_english(code):
    english = english_reference_lines()
    lines = reference_lines(get_profile(code))
    assert len(lines) == len(english) >= 300
    assert all(line.strip() for line in lines)
    # Years and other 4-digit numbers survive translation: line i must carry the numbers of English line i
    # (an off-by-one shift drops this to ~0).
    assert _number_agreement(english, lines) >= 0.85
    assert _number_agreement(english, lines[1:]) < 0.2


def test_reference_text_is_in_the_profile_script():
    for code in sorted(PUD_LANGUAGES - {"en"}):
        profile = get_profile(code)
        text = "".join(reference_lines(profile))
        own = len(regex.findall(r"[%s]" % "".join(r"\p{Script=%s}" % s for s in profile.scripts), text))
        letters = len(regex.findall(r"\p{L}", text))
        assert own / letters > 0.9, code


def test_get_profile_accepts_both_codes_and_rejects_others():
    assert get_profile("mar") is get_profile("mr")
    assert get_profile("MAI").name == "Maithili"
    with pytest.raises(BabeltuneError, match="no language profile with code 'xx'"):
        get_profile("xx")


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"colour": "red"}, r"colour: Extra inputs are not permitted"),
        ({"scripts": ["Devanagri"]}, r"scripts.*Devanagri"),
        ({"resource_class": 7}, r"resource_class"),
        ({"resource_class": "2"}, r"resource_class"),
        ({"space_delimited": "yes"}, r"space_delimited"),
        ({"morphology": "complex"}, r"morphology"),
        ({"code": "mar"}, r"code 'mar' must be the ISO 639-1 code"),
        ({"reference": "../../etc/passwd"}, r"reference"),
        ({"sources": []}, r"sources"),
    ],
)
def test_bad_profiles_fail_with_one_line_naming_file_and_key(changes, message):
    with pytest.raises(BabeltuneError, match=message) as caught:
        parse_profile(as_yaml(valid_profile_dict(**changes)), "mr.yaml")
    assert str(caught.value).startswith("lang_profiles/mr.yaml: ")
    assert "\n" not in str(caught.value)


def test_file_name_must_match_code_and_yaml_must_be_a_mapping():
    with pytest.raises(BabeltuneError, match=re.escape("rename the file to mr.yaml")):
        parse_profile(as_yaml(valid_profile_dict()), "marathi.yaml")
    with pytest.raises(BabeltuneError, match="expected a mapping"):
        parse_profile("- just\n- a list\n", "mr.yaml")
    with pytest.raises(BabeltuneError, match="not valid YAML"):
        parse_profile("code: [unclosed\n", "mr.yaml")


def test_two_profiles_claiming_one_alias_is_an_error():
    hindi = get_profile("hi")
    clash = get_profile("mr").model_copy(update={"aliases": ("Hindi",)})
    with pytest.raises(BabeltuneError, match="'hindi' is also claimed"):
        _check_unique_keys({"hi": hindi, "mr": clash})
