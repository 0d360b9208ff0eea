"""Language profiles: one YAML file per language in ``lang_profiles/`` (package data of
``babeltune.lang_profiles``), validated by the strict :class:`LangProfile` schema.

A profile holds what the advisor needs to know about a language *before* measuring anything:
its codes and names (for ``--lang``), its scripts (to check the corpus's script mix), whether it
puts spaces between words (whether "words" and fertility exist), its morphology type, its
resource class in Joshi et al. (2020), its py3langid code and, for some languages, a file of
parallel reference sentences used to measure the tokenizer premium versus English.
"""

from __future__ import annotations

import functools
import unicodedata
from importlib import resources
from typing import Literal

import regex
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from babeltune.errors import BabeltuneError

PROFILE_PACKAGE = "babeltune.lang_profiles"
REFERENCE_FOLDER = "reference"
ENGLISH = "en"

Morphology = Literal["isolating", "analytic", "fusional", "agglutinative", "templatic", "polysynthetic"]


class LangProfile(BaseModel):
    """One language, as described by ``lang_profiles/<code>.yaml``. Unknown keys are errors."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    code: str = Field(
        pattern=r"^[a-z]{2,3}$",
        description="babeltune's key for the language and the YAML file's stem: the ISO 639-1 code "
        "where one exists, else the ISO 639-3 code.",
    )
    iso639_1: str | None = Field(
        default=None, pattern=r"^[a-z]{2}$", description="Two-letter ISO 639-1 code, or null if the language has none."
    )
    iso639_3: str = Field(
        pattern=r"^[a-z]{3}$",
        description="Three-letter ISO 639-3 code (the macrolanguage code where ISO 639-1 names a macrolanguage, "
        "e.g. 'zho', 'ara'; individual-language codes such as 'cmn', 'arb' go in aliases).",
    )
    name: str = Field(min_length=1, description="English name, as users type it (e.g. 'Marathi').")
    native_name: str = Field(min_length=1, description="The language's name for itself, in its own script (autonym).")
    aliases: tuple[str, ...] = Field(
        default=(),
        description="Other names and codes that --lang accepts: alternative English names, spellings in other "
        "scripts, individual-language ISO 639-3 codes. Matched case-insensitively; unique across profiles.",
    )
    scripts: tuple[str, ...] = Field(
        min_length=1,
        description="Unicode scripts the language is written in, most common first, as `regex` Script "
        "property values (e.g. 'Devanagari', 'Han', 'Latin').",
    )
    space_delimited: bool = Field(
        strict=True,
        description="True if words are separated by spaces, so that words, fertility (tokens per word) "
        "and the share of split words are meaningful; false for e.g. Chinese, Japanese, Thai.",
    )
    morphology: Morphology = Field(
        description="Dominant morphological type: isolating/analytic (few inflections), fusional, "
        "agglutinative (long chains of affixes), templatic (root-and-pattern, e.g. Arabic), polysynthetic."
    )
    resource_class: int = Field(
        strict=True,
        ge=0,
        le=5,
        description="Resource class 0 (left-behinds) to 5 (winners) in Joshi et al. 2020, 'The State and Fate "
        "of Linguistic Diversity and Inclusion in the NLP World' (ACL 2020).",
    )
    family: str = Field(min_length=1, description="Language family and branch, e.g. 'Indo-European > Indo-Aryan'.")
    langid_code: str | None = Field(
        default=None, description="The label py3langid uses for this language, or null if py3langid does not know it."
    )
    reference: str | None = Field(
        default=None,
        description="File name in lang_profiles/reference/ holding parallel reference sentences aligned line by "
        "line with reference/en.txt, or null if none is shipped.",
    )
    sources: tuple[str, ...] = Field(
        min_length=1, description="Where the facts in this file come from (publications, standards, datasets)."
    )
    notes: tuple[str, ...] = Field(
        default=(), description="Caveats, e.g. where a value is a best reading rather than a quoted figure."
    )

    @field_validator("scripts")
    @classmethod
    def _scripts_are_unicode_scripts(cls, scripts: tuple[str, ...]) -> tuple[str, ...]:
        for script in scripts:
            try:
                regex.compile(r"\p{Script=%s}" % script)
            except regex.error as exc:
                raise ValueError(f"'{script}' is not a Unicode script name known to `regex` ({exc})") from None
        return scripts

    @field_validator("reference")
    @classmethod
    def _reference_is_a_plain_file_name(cls, reference: str | None) -> str | None:
        if reference is not None and ("/" in reference or "\\" in reference or not reference.endswith(".txt")):
            raise ValueError(f"'{reference}' must be a plain .txt file name inside lang_profiles/reference/")
        return reference

    @model_validator(mode="after")
    def _code_follows_iso(self) -> "LangProfile":
        expected = self.iso639_1 or self.iso639_3
        if self.code != expected:
            raise ValueError(f"code '{self.code}' must be the ISO 639-1 code if any, else the ISO 639-3 code ('{expected}')")
        return self

    def lookup_keys(self) -> list[str]:
        """Every string --lang may use for this language (codes, names, aliases), as written."""
        keys = [self.code, self.iso639_3, self.name, self.native_name, *self.aliases]
        if self.iso639_1:
            keys.append(self.iso639_1)
        return keys


def _profile_files() -> list:
    """The *.yaml files of the lang_profiles package (works installed, editable or zipped)."""
    folder = resources.files(PROFILE_PACKAGE)
    return sorted((entry for entry in folder.iterdir() if entry.name.endswith(".yaml")), key=lambda e: e.name)


def _first_error(exc: ValidationError) -> str:
    error = exc.errors()[0]
    key = ".".join(str(part) for part in error["loc"]) or "(file)"
    return f"{key}: {error['msg']}"


def parse_profile(text: str, file_name: str) -> LangProfile:
    """Validate one profile's YAML text; BabeltuneError names the file, the key and what is wrong."""
    where = f"lang_profiles/{file_name}"
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise BabeltuneError(f"{where}: not valid YAML ({' '.join(str(exc).split())})") from None
    if not isinstance(data, dict):
        raise BabeltuneError(f"{where}: expected a mapping of profile keys, got {type(data).__name__}")
    try:
        profile = LangProfile.model_validate(data)
    except ValidationError as exc:
        raise BabeltuneError(f"{where}: {_first_error(exc)} (fix the file; keys are described in babeltune/languages/profiles.py)") from None
    stem = file_name.rsplit(".", 1)[0]
    if profile.code != stem:
        raise BabeltuneError(f"{where}: code '{profile.code}' differs from the file name; rename the file to {profile.code}.yaml")
    return profile


def _check_unique_keys(profiles: dict[str, LangProfile]) -> None:
    """Two profiles claiming the same name or code would make --lang ambiguous."""
    owner: dict[str, str] = {}
    for code, profile in profiles.items():
        for key in {normalize_key(k) for k in profile.lookup_keys()}:
            if owner.setdefault(key, code) != code:
                raise BabeltuneError(
                    f"lang_profiles/{code}.yaml: '{key}' is also claimed by lang_profiles/{owner[key]}.yaml; "
                    "remove it from one of them"
                )


def normalize_key(text: str) -> str:
    """Case- and spacing-insensitive form of a language name or code, used for lookups."""
    return " ".join(unicodedata.normalize("NFC", text).casefold().replace("_", "-").split())


@functools.cache
def _load_all() -> dict[str, LangProfile]:
    profiles: dict[str, LangProfile] = {}
    for entry in _profile_files():
        profile = parse_profile(entry.read_text(encoding="utf-8"), entry.name)
        profiles[profile.code] = profile
    if not profiles:
        raise BabeltuneError(f"no language profiles found in package {PROFILE_PACKAGE}; reinstall babeltune")
    _check_unique_keys(profiles)
    return profiles


def load_profiles() -> dict[str, LangProfile]:
    """All language profiles by code, parsed and validated once per process (a fresh dict each call)."""
    return dict(_load_all())


def get_profile(code: str) -> LangProfile:
    """The profile for an ISO 639-1 or ISO 639-3 code (use ``resolve_language`` for names)."""
    profiles = _load_all()
    wanted = code.strip().lower()
    if wanted in profiles:
        return profiles[wanted]
    for profile in profiles.values():
        if wanted in (profile.iso639_1, profile.iso639_3):
            return profile
    raise BabeltuneError(f"no language profile with code '{code}'; codes available: {', '.join(sorted(profiles))}")


@functools.cache
def _read_reference(file_name: str) -> tuple[str, ...]:
    entry = resources.files(PROFILE_PACKAGE).joinpath(REFERENCE_FOLDER, file_name)
    if not entry.is_file():
        raise BabeltuneError(
            f"lang_profiles/{REFERENCE_FOLDER}/{file_name}: reference file named in a profile is missing; "
            "restore it or set `reference: null`"
        )
    return tuple(entry.read_text(encoding="utf-8").splitlines())


def reference_lines(profile: LangProfile) -> list[str] | None:
    """The profile's parallel reference sentences (line i translates English line i), or None."""
    if profile.reference is None:
        return None
    return list(_read_reference(profile.reference))


def english_reference_lines() -> list[str]:
    """The English side of the parallel reference text, the denominator of every premium."""
    lines = reference_lines(get_profile(ENGLISH))
    if lines is None:
        raise BabeltuneError("lang_profiles/en.yaml: `reference` must name the English reference file (en.txt)")
    return lines
