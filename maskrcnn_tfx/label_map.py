"""The label map: one file format, one reader (contract 2 of docs/architecture.md).

A label map is a JSON file::

    {"format": "maskrcnn-tfx/label-map@1",
     "classes": [{"id": 1, "name": "person"}, {"id": 3, "name": "car"}]}

Class ids are the data set's own (COCO keeps its ids 1 to 90 with gaps), the same in the TFRecords, the
model's outputs, the served ``detection_classes`` and the report. Id 0 is background and never listed.
"""
from __future__ import annotations

import dataclasses
import functools
import json
from typing import Dict, Iterable, List, Mapping, Tuple

from maskrcnn_tfx import files

FORMAT_TAG = "maskrcnn-tfx/label-map@1"
FILE_NAME = "label_map.json"


class LabelMapError(ValueError):
    """A label map file or entry that cannot be used."""


@dataclasses.dataclass(frozen=True)
class LabelMap:
    """Class id to name, ordered by id."""

    entries: Tuple[Tuple[int, str], ...]

    def __post_init__(self):
        seen_ids, seen_names = set(), set()
        for class_id, name in self.entries:
            if not isinstance(class_id, int) or isinstance(class_id, bool) or class_id < 1:
                raise LabelMapError(f"class id {class_id!r} ({name!r}) must be an integer >= 1 (0 is background)")
            if not name or not isinstance(name, str):
                raise LabelMapError(f"class id {class_id} has no name")
            if class_id in seen_ids:
                raise LabelMapError(f"class id {class_id} is listed twice")
            if name in seen_names:
                raise LabelMapError(f"class name {name!r} is listed twice")
            seen_ids.add(class_id)
            seen_names.add(name)
        object.__setattr__(self, "entries", tuple(sorted(self.entries)))

    @classmethod
    def from_pairs(cls, pairs: Iterable[Tuple[int, str]]) -> "LabelMap":
        return cls(tuple((int(i), str(n)) for i, n in pairs))

    @classmethod
    def from_dict(cls, mapping: Mapping[int, str]) -> "LabelMap":
        return cls.from_pairs(mapping.items())

    @property
    def ids(self) -> List[int]:
        return [i for i, _ in self.entries]

    @property
    def names(self) -> List[str]:
        return [n for _, n in self.entries]

    @property
    def num_classes(self) -> int:
        """Size of the model's class dimension: the largest id plus one for background."""
        return max(self.ids, default=0) + 1

    @functools.cached_property
    def _by_id(self) -> Dict[int, str]:
        return dict(self.entries)

    def as_dict(self) -> Dict[int, str]:
        return dict(self._by_id)

    def name_of(self, class_id: int) -> str:
        try:
            return self._by_id[int(class_id)]
        except KeyError:
            raise LabelMapError(f"class id {class_id} is not in the label map") from None

    def id_of(self, name: str) -> int:
        for class_id, class_name in self.entries:
            if class_name == name:
                return class_id
        raise LabelMapError(f"class name {name!r} is not in the label map")

    def __contains__(self, class_id) -> bool:
        return int(class_id) in self._by_id

    def __len__(self) -> int:
        return len(self.entries)

    def to_json(self) -> str:
        body = {"format": FORMAT_TAG, "classes": [{"id": i, "name": n} for i, n in self.entries]}
        return json.dumps(body, indent=1, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str, source: str = "<string>") -> "LabelMap":
        try:
            body = json.loads(text)
        except json.JSONDecodeError as e:
            raise LabelMapError(f"{source}: not JSON ({e})") from None
        if not isinstance(body, dict) or body.get("format") != FORMAT_TAG:
            raise LabelMapError(f"{source}: not a label map (expected \"format\": \"{FORMAT_TAG}\")")
        try:
            return cls.from_pairs((c["id"], c["name"]) for c in body["classes"])
        except (KeyError, TypeError) as e:
            raise LabelMapError(f"{source}: every class needs an \"id\" and a \"name\" ({e!r})") from None

    def save(self, path: str) -> None:
        """Writes the label map (local path or any path ``tf.io.gfile`` understands)."""
        files.write_text(path, self.to_json())

    @classmethod
    def load(cls, path: str) -> "LabelMap":
        return cls.from_json(files.read_text(path), source=str(path))

