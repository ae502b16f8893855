"""Derivations applied to pushed items before they are stored (and again on retarget).

A hook applies to an importer by the fields it declares, not by its slug: any importer with a
``local_subtype`` field gets the inference, any with ``culture_topic_slug`` and
``culture_topic_name`` gets the slug derived. What a hook adds is written under the field's
first input name, so the importer's own mapping, validation and key apply to it as to any
value the agent sent; it becomes part of the item's data and so of the record on promotion.
"""

import re
import unicodedata
from collections.abc import Callable
from typing import Any

from app.importers.schemas import ImporterDefinition

Item = dict[str, Any]
Hook = Callable[[ImporterDefinition, list[Item]], None]

_FOLD = re.compile(r"[\s_-]+")
_NON_ALNUM = re.compile(r"[^a-z0-9]+")

# Where a person's kind of local is read from when `local_subtype` is absent, in order.
SUBTYPE_HINTS = ("person_type", "role", "occupation", "type")
# Subtype -> the words that name it. A hint matching none of them keeps its own slug, so
# nothing the agent said is lost ("Lighthouse keeper" -> "lighthouse-keeper").
SUBTYPES: dict[str, str] = {
    "artist": "painter, sculptor, illustrator, photographer, artisan, craftsman, craftswoman, "
    "potter, designer",
    "musician": "singer, songwriter, composer, band, dj, guitarist, pianist, drummer, rapper, "
    "violinist",
    "chef": "cook, baker, brewer, winemaker, restaurateur, bartender, barista, butcher",
    "athlete": "player, coach, runner, cyclist, footballer, swimmer",
    "writer": "author, poet, novelist, journalist, blogger",
    "performer": "actor, actress, dancer, comedian, magician",
    "educator": "teacher, professor, lecturer, librarian",
    "entrepreneur": "founder, business owner, shop owner, shopkeeper, owner, merchant",
    "guide": "tour guide, ranger",
    "historian": "storyteller, archivist, elder",
    "official": "mayor, politician, councillor, councilor",
    "activist": "volunteer, organizer, organiser, community leader",
    "farmer": "fisherman, fisherwoman, fisher, beekeeper, grower",
}
_WORDS = sorted(
    (
        (word, subtype)
        for subtype, words in SUBTYPES.items()
        for word in (subtype, *(w.strip() for w in words.split(",")))
    ),
    key=lambda pair: -len(pair[0]),  # "tour guide" before "guide", "shop owner" before "owner"
)


def fold(name: str) -> str:
    """Header folding as the importer mapping does it: case, spaces, _ and - do not matter."""
    return _FOLD.sub("", name).casefold()


def slugify(value: str) -> str:
    ascii_text = unicodedata.normalize("NFKD", value).encode("ascii", "ignore").decode("ascii")
    return _NON_ALNUM.sub("-", ascii_text.lower()).strip("-")


def _input_names(definition: ImporterDefinition, field: str) -> list[str]:
    spec = definition.fields[field]
    return list(spec.from_ or [field])


def _lookup(item: Item, names: list[str] | tuple[str, ...]) -> Any:
    """The first non-blank value among ``names`` (matched like headers), else None."""
    folded = {fold(key): key for key in reversed(list(item))}
    for name in names:
        key = folded.get(fold(name))
        if key is None:
            continue
        value = item[key]
        if isinstance(value, list):
            value = next((v for v in value if isinstance(v, str) and v.strip()), None)
        if isinstance(value, str) and value.strip():
            return value.strip()
    return None


def _present(item: Item, names: list[str]) -> bool:
    folded = {fold(key): key for key in item}
    for name in names:
        key = folded.get(fold(name))
        if key is not None and item[key] not in (None, "", []):
            return True
    return False


def infer_subtype(hint: str) -> str:
    """``"Jazz Musician"`` -> ``musician``; an unknown kind keeps its slug."""
    text = " " + " ".join(_NON_ALNUM.sub(" ", hint.lower()).split()) + " "
    for word, subtype in _WORDS:
        if f" {word} " in text or f" {word}s " in text:
            return subtype
    return slugify(hint)


def local_subtype(definition: ImporterDefinition, items: list[Item]) -> None:
    if "local_subtype" not in definition.fields:
        return
    names = _input_names(definition, "local_subtype")
    for item in items:
        if _present(item, names):
            continue
        hint = _lookup(item, SUBTYPE_HINTS)
        if hint is not None and (subtype := infer_subtype(hint)):
            item[names[0]] = subtype


def culture_topic(definition: ImporterDefinition, items: list[Item]) -> None:
    """A topic named but not slugged gets the slug of its name (`Street Art` -> street-art)."""
    if not {"culture_topic_slug", "culture_topic_name"} <= definition.fields.keys():
        return
    slug_names = _input_names(definition, "culture_topic_slug")
    name_names = _input_names(definition, "culture_topic_name")
    for item in items:
        if _present(item, slug_names):
            continue
        name = _lookup(item, name_names)
        if name is not None and (slug := slugify(name)):
            item[slug_names[0]] = slug


HOOKS: tuple[Hook, ...] = (local_subtype, culture_topic)


def apply_hooks(definition: ImporterDefinition, items: list[Item]) -> None:
    """Run every hook that applies to ``definition`` over ``items`` (in place)."""
    for hook in HOOKS:
        hook(definition, items)


def align_columns(definition: ImporterDefinition, items: list[Item]) -> None:
    """Make a push read as if each item were its own file.

    The splitter maps an NDJSON file's columns once, as they stand after its first row, and
    then reads one column per field for every row, so in a batch of JSON objects (1) a field
    the first item lacks would be unmapped for all, and (2) an item using another of a field's
    `from` names than the others would lose its value. So each item that names a field only by
    a later `from` name gets its value under the first name too (the alias stays, unmapped),
    and the first item gets a null for each first name that only later items carry. A null
    and an absent value validate alike, so no item's typed data changes.
    """
    primaries: list[tuple[str, list[str]]] = []
    for field in definition.fields:
        names = _input_names(definition, field)
        primaries.append((names[0], [fold(name) for name in names]))
    for item in items:
        folded = {fold(key): key for key in reversed(list(item))}
        for primary, names in primaries:
            if names[0] in folded:
                continue
            alias = next((folded[name] for name in names[1:] if name in folded), None)
            if alias is not None:
                item[primary] = item[alias]
    if len(items) < 2:
        return
    first = items[0]
    have = {fold(key) for key in first}
    for item in items[1:]:
        for primary, names in primaries:
            if names[0] not in have and primary in item:
                first[primary] = None
                have.add(names[0])
