"""Class maps: one data set's labels onto a common vocabulary, so a model from one lab is scored in another.

Two labs name the same cells differently (PBC's ``neutrophil`` is DeepAPL's ``Segmented neutrophils`` and
``Band neutrophils``), and one may hold types the other lacks (DeepAPL's blasts). A class map says once which
source labels make each common label and which are left out. Two file forms:

- YAML: ``classes: {common: [source, ...]}`` and an optional ``drop: [source, ...]``; a common label may
  list no source (``lymphocyte: []`` or ``lymphocyte:``), when the data already use it;
- CSV: columns ``source,target`` (others, such as a comment, are ignored); an empty target (``label,``)
  drops that source label.

A label equal to a common name maps to itself (so one map serves both data sets). Labels are compared
case-insensitively. Applying a map refuses labels it does not mention (a typo would otherwise drop cells
silently), removes the ``drop`` ones and counts them. Maps shipped with leukoscope (``data/maps/*.yaml``) are
found by name: ``--class-map pbc-deepapl``. A bundle trained with a map keeps its content (``to_json``, the
YAML form as JSON, read back by ``from_json`` with the same checks), so the record outlives the file.
"""

from __future__ import annotations

import csv
import io
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from leukoscope.data.manifest import UNLABELLED, Manifest, labelled, validate
from leukoscope.errors import ConfigError, DataError

#: The folder of shipped maps (package data) and their suffix.
MAPS = "leukoscope.data.maps"
SUFFIX = ".yaml"


def shipped_maps() -> list[str]:
    """Names of the class maps that ship with leukoscope."""
    return sorted(
        p.name.removesuffix(SUFFIX) for p in resources.files(MAPS).iterdir() if p.name.endswith(SUFFIX)
    )


@dataclass(frozen=True)
class ClassMap:
    """Source label (case-folded) -> common label, the common labels, and the labels left out."""

    source: str
    classes: tuple[str, ...]
    targets: dict[str, str]
    drop: frozenset[str] = field(default_factory=frozenset)
    #: (source label, common label or None to drop) as the file wrote them: ``to_json`` keeps their case
    pairs: tuple[tuple[str, str | None], ...] = ()

    def to_json(self) -> dict[str, Any]:
        """The map as a bundle records it: its name and the file's content (``classes`` and ``drop``)."""
        classes: dict[str, list[str]] = {c: [] for c in self.classes}
        for label, target in self.pairs:
            if target is not None:
                classes[target].append(label)
        return {"name": self.source, "classes": classes,
                "drop": [label for label, target in self.pairs if target is None]}

    def same_labels(self, other: ClassMap) -> bool:
        """Whether ``other`` maps every label as this map does (the name and the file's case aside)."""
        return (self.targets, self.drop) == (other.targets, other.drop)

    def counts(self, out: Manifest, dropped: dict[str, int]) -> dict[str, Any]:
        """What ``apply`` did (for reports): labelled cells per common label, left out per source label."""
        return {"name": self.source, "mapped": dict(sorted(Counter(labelled(out)["label"]).items())),
                "left_out": dropped, "left_out_total": sum(dropped.values())}

    def check_classes(self, m: Manifest, known: list[str], what: str) -> None:
        """Raise when a mapped label of ``m`` is not among ``known`` (a model's classes)."""
        unknown = sorted(set(m.loc[m["source_split"] != "unlabelled", "label"]) - set(known))
        if unknown:
            raise ConfigError(f"{self.source}: target label(s) {unknown} are not among {what} {known}")

    def apply(self, m: Manifest) -> tuple[Manifest, dict[str, int]]:
        """``m`` with labels mapped (the old one kept as ``source_label``) and dropped rows removed;
        the count of dropped rows per source label. Unlabelled rows pass through unchanged."""
        labelled = m["source_split"] != "unlabelled"
        folded = m["label"].astype(str).str.casefold()
        unmapped = sorted(set(m.loc[labelled & ~folded.isin(set(self.targets) | self.drop), "label"]))
        if unmapped:
            raise DataError(
                f"{self.source}: label(s) of the data not in the map: {unmapped}; list each "
                f"under a class or under drop"
            )
        dropped = labelled & folded.isin(self.drop)
        counts = dict(sorted(Counter(m.loc[dropped, "label"]).items()))
        out = m.loc[~dropped].copy()
        keep = labelled[~dropped]
        out["source_label"] = out["label"]
        out.loc[keep, "label"] = folded[~dropped][keep].map(self.targets)
        out.loc[~keep, "label"] = UNLABELLED
        return validate(out), counts


def counts_line(counts: dict[str, Any]) -> str:
    """``ClassMap.counts`` in one line (terminal, leaderboard): cells mapped per common label, left out."""
    mapped = counts["mapped"]
    line = (f"class map {counts['name']} applied: {sum(mapped.values())} labelled cell(s) onto {len(mapped)} "
            "common label(s) (" + ", ".join(f"{k} {v}" for k, v in mapped.items()) + ")")
    if counts["left_out"]:
        line += (f"; left out {counts['left_out_total']} cell(s) of types it drops ("
                 + ", ".join(f"{k} {v}" for k, v in counts["left_out"].items()) + ")")
    return line


def _fail(source: str, why: str) -> ConfigError:
    return ConfigError(f"{source}: {why}")


def _build(source: str, pairs: list[tuple[str, str | None]], named: Iterable[str] = ()) -> ClassMap:
    """A map from (source label, common label or None to drop) pairs and the common labels ``named``
    with no source of their own (they map to themselves); duplicates are errors."""
    classes = sorted({t for _, t in pairs if t is not None} | set(named))
    if not classes:
        raise _fail(source, "no common class (nothing to map to)")
    if any(not c.strip() for c in classes):
        raise _fail(source, "a blank common label")
    seen: dict[str, str | None] = {}
    for label, target in pairs:
        key = label.strip().casefold()
        if not key:
            raise _fail(source, f"a blank source label (for {target!r})")
        if key in seen:
            where = "drop" if seen[key] is None else repr(seen[key])
            raise _fail(source, f"label {label!r} is listed twice (already under {where})")
        seen[key] = target
    for c in classes:  # a common name maps to itself unless the file says otherwise
        seen.setdefault(c.casefold(), c)
    clash = [c for c in classes if seen[c.casefold()] != c]
    if clash:
        raise _fail(source, f"common label(s) {clash} are mapped elsewhere or dropped")
    return ClassMap(
        source,
        tuple(classes),
        {k: v for k, v in seen.items() if v is not None},
        frozenset(k for k, v in seen.items() if v is None),
        tuple((label.strip(), target) for label, target in pairs),
    )


def _text(path: Path, what: str) -> str:
    """The file's text; one line naming it when it is not UTF-8 (a UTF-16 file from Notepad, Latin-1)."""
    try:
        return path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        raise _fail(str(path), f"not {what} (not UTF-8: {e.reason} at byte {e.start}; save it as UTF-8)"
                    ) from None
    except OSError as e:  # a directory named .yaml, no permission
        raise _fail(str(path), f"cannot read ({e.strerror or e})") from None


def _yaml_map(path: Path, text: str) -> ClassMap:
    """The map of a YAML file's text; a key written twice is an error (PyYAML would keep the last)."""
    import yaml

    class Loader(yaml.SafeLoader):
        pass

    def mapping(loader: yaml.SafeLoader, node: yaml.MappingNode) -> dict[Any, Any]:
        keys = [loader.construct_object(k) for k, _ in node.value]
        twice = sorted({str(k) for k in keys if keys.count(k) > 1})
        if twice:
            raise _fail(str(path), f"key(s) {twice} appear twice")
        return loader.construct_mapping(node)

    Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, mapping)
    try:
        doc = yaml.load(text, Loader=Loader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as e:
        raise _fail(str(path), f"not readable YAML ({str(e).splitlines()[0]})") from None
    return _build(str(path), *_doc_pairs(str(path), doc))


def _doc_pairs(where: str, doc: Any, keys: tuple[str, ...] = ("classes", "drop")
               ) -> tuple[list[tuple[str, str | None]], list[str]]:
    """The pairs of a map's document (``classes: {common: [source, ...]}``, ``drop: [source, ...]``) and
    its common labels (those listing no source too, so they are not lost)."""
    if not isinstance(doc, dict) or not isinstance(doc.get("classes"), dict):
        raise _fail(where, "expected a 'classes:' mapping (common label: [source labels])")
    extra = sorted(set(doc) - set(keys))
    if extra:
        raise _fail(where, f"unknown key(s) {extra} (expected {', '.join(keys)})")
    pairs: list[tuple[str, str | None]] = []
    for target, sources in doc["classes"].items():
        if target is None:
            raise _fail(where, "a blank common label")
        sources = [] if sources is None else sources
        if not isinstance(sources, list) or not all(isinstance(s, str | int) for s in sources):
            raise _fail(where, f"class {target!r}: expected a list of source labels")
        pairs += [(str(s), str(target)) for s in sources]
    drop = doc.get("drop") or []
    if not isinstance(drop, list) or not all(isinstance(s, str | int) for s in drop):
        raise _fail(where, "'drop:' must be a list of source labels")
    return pairs + [(str(s), None) for s in drop], [str(t) for t in doc["classes"]]


def from_json(doc: Any, where: str) -> ClassMap:
    """A map recorded by ``ClassMap.to_json`` (a bundle's ``class_map``), checked as a map file is;
    errors name ``where``."""
    if not isinstance(doc, dict) or not isinstance(doc.get("name"), str):
        raise _fail(where, "expected an object with a 'name' and the map's 'classes' (and 'drop')")
    return _build(doc["name"], *_doc_pairs(where, doc, ("name", "classes", "drop")))


def _csv_pairs(path: Path) -> list[tuple[str, str | None]]:
    """The (source, target) rows of a CSV map.

    A row without its source and target fields (``neutrophil`` with no comma would otherwise drop the label
    silently: a drop is an explicit ``neutrophil,``) or with a non-empty field past the header's columns (a
    column the header does not name, which shifted the others) is refused, naming its line. Empty fields
    past the header (the trailing commas Excel writes) and blank rows are harmless and ignored."""
    where = str(path)
    try:
        reader = csv.reader(io.StringIO(_text(path, "a readable CSV")), strict=True)
        rows = [(row, reader.line_num) for row in reader if any(f.strip() for f in row)]
    except csv.Error as e:
        raise _fail(where, f"not a readable CSV ({e})") from None
    if not rows:
        raise _fail(where, "empty (expected columns source,target)")
    header = [c.strip().lower() for c in rows[0][0]]
    while header and not header[-1]:
        header.pop()
    if header.count("source") != 1 or header.count("target") != 1:
        raise _fail(where, f"expected columns source,target (once each), found {header}")
    s, t = header.index("source"), header.index("target")
    pairs: list[tuple[str, str | None]] = []
    for row, line in rows[1:]:
        if len(row) <= max(s, t):
            raise _fail(where, f"line {line}: {len(row)} field(s), but a row needs its source and target "
                               f"(columns {','.join(header)}); a dropped label is written 'label,'")
        if any(f.strip() for f in row[len(header):]):
            raise _fail(where, f"line {line}: {len(row)} fields, but the header names {len(header)} "
                               f"({','.join(header)}); name the extra column in the header or remove it")
        pairs.append((row[s], row[t].strip() or None))
    return pairs


def load_class_map(spec: str | Path) -> ClassMap:
    """A class map from a file (``.yaml``/``.yml``/``.csv``) or a shipped name (``pbc-deepapl``)."""
    path = Path(spec)
    if not path.is_file():
        if str(spec) in shipped_maps():
            text = resources.files(MAPS).joinpath(f"{spec}{SUFFIX}").read_text(encoding="utf-8")
            return _yaml_map(Path(str(spec)), text)
        raise ConfigError(
            f"--class-map {spec}: no such file, nor a shipped map ({', '.join(shipped_maps())})"
        )
    if path.suffix.lower() == ".csv":
        return _build(str(path), _csv_pairs(path))
    if path.suffix.lower() in (".yaml", ".yml"):
        return _yaml_map(path, _text(path, "readable YAML"))
    raise _fail(str(path), "a class map is a .yaml, .yml or .csv file")
