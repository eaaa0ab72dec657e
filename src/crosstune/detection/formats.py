"""Reading the three box-annotation formats people have into :class:`~crosstune.detection.annotations.AnnotatedImage`.

- **Pascal VOC**: a folder with ``Annotations/*.xml`` and ``JPEGImages/`` (labelImg, CVAT and Roboflow export
  it); point at the folder for every image, or at an image-set file (``ImageSets/Main/train.txt``: one id per
  line) for a split. Corners are read as written (VOC's are 1-based; a pixel either way).
- **COCO JSON**: one ``.json`` with ``images`` (``file_name``, ``width``, ``height``), ``annotations``
  (``bbox`` = ``[x, y, width, height]``) and ``categories``; images resolve beside the file or in ``images/``
  beside it. Crowd regions (``iscrowd: 1``) are left out, as COCO's own evaluation ignores them.
- **YOLO**: a folder with ``images/`` and ``labels/`` (or Ultralytics' ``images/<split>`` with
  ``labels/<split>`` beside it), one ``class x_center y_center width height`` line per box, normalised to
  [0, 1], and the class names in ``classes.txt``/``obj.names`` (one per line) or ``data.yaml`` (``names:``)
  in the folder or up to two levels above it.

:func:`read_annotations` picks the reader from the path. Every problem names the file, the line or box and
the fix (:class:`~crosstune.errors.DataError`).
"""

from __future__ import annotations

import json
import xml.etree.ElementTree as ElementTree
from pathlib import Path
from typing import Sequence

from crosstune.detection.annotations import IMAGE_SUFFIXES, AnnotatedImage, Box, checked, image_size
from crosstune.errors import DataError

FORMATS = ("voc", "coco", "yolo")
CLASS_LIST_FILES = ("classes.txt", "obj.names", "data.yaml", "data.yml")


def annotation_format(path: Path) -> str:
    """Which of :data:`FORMATS` ``path`` holds, from its layout; anything else is a :class:`DataError`."""
    if path.is_file() and path.suffix.lower() == ".json":
        return "coco"
    if path.is_file() and path.suffix.lower() == ".txt" and _voc_root(path) is not None:
        return "voc"
    if path.is_dir() and (path / "Annotations").is_dir():
        return "voc"
    if path.is_dir() and _yolo_labels(path) is not None:
        return "yolo"
    if not path.exists():
        raise DataError(f"{path} does not exist; point data.train / data.test at a Pascal VOC folder, a COCO .json "
                        f"or a YOLO folder.")
    raise DataError(f"{path}: not a box-annotation layout; give a Pascal VOC folder (Annotations/ and JPEGImages/) "
                    f"or its ImageSets/Main/<split>.txt, a COCO .json, or a YOLO folder (images/ and labels/ with "
                    f"classes.txt or data.yaml).")


def read_annotations(path: str | Path, classes: Sequence[str] | None = None,
                     drop_bad_boxes: bool = False) -> tuple[list[AnnotatedImage], list[str] | None]:
    """The images and boxes at ``path`` (any of :data:`FORMATS`), each box checked against the image and against
    ``classes`` (the training classes when reading a test split) or the file's own class list. Returns the images
    and the class list the format declares (COCO's categories, YOLO's names; None for VOC, whose classes are the
    names its boxes use)."""
    path = Path(path)
    kind = annotation_format(path)
    images, declared = (_read_voc(path), None) if kind == "voc" else _read_coco(path) if kind == "coco" \
        else _read_yolo(path)
    if not images:
        raise DataError(f"{path}: no annotated images found; check the path.")
    return checked(images, classes if classes is not None else declared, drop_bad_boxes, path), declared


# Pascal VOC


def _voc_root(split_file: Path) -> Path | None:
    """The VOC folder of an image-set file (``<root>/ImageSets/Main/<split>.txt``), or None."""
    for root in (split_file.parent.parent.parent, split_file.parent):
        if (root / "Annotations").is_dir():
            return root
    return None


def _read_voc(path: Path) -> list[AnnotatedImage]:
    if path.is_file():
        root = _voc_root(path)
        ids = [line.split()[0] for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        files = []
        for number, image_id in enumerate(ids, 1):
            xml = root / "Annotations" / f"{image_id}.xml"
            if not xml.is_file():
                raise DataError(f"{path}, line {number}: image id {image_id!r} has no annotation file {xml}; add it "
                                f"or remove the line.")
            files.append(xml)
    else:
        root, files = path, sorted((path / "Annotations").glob("*.xml"))
        annotated = {xml.stem for xml in files}
        images_dir = root / "JPEGImages"
        orphans = sorted(image.name for image in images_dir.iterdir() if image.suffix.lower() in IMAGE_SUFFIXES
                         and image.stem not in annotated) if images_dir.is_dir() else []
        if orphans:
            raise DataError(f"{images_dir}: {len(orphans)} image(s) without an annotation file in "
                            f"{root / 'Annotations'} (first: {orphans[0]}); annotate them (an XML with no <object> "
                            f"for an image with nothing on it) or move them out.")
    return [_voc_image(xml, root) for xml in files]


def _voc_image(xml: Path, root: Path) -> AnnotatedImage:
    try:
        tree = ElementTree.parse(xml).getroot()
    except ElementTree.ParseError as error:
        raise DataError(f"{xml}: not valid XML ({error}); fix or re-export the file.") from error
    name = (tree.findtext("filename") or "").strip()
    candidates = [root / "JPEGImages" / name] if name else []
    candidates += [root / "JPEGImages" / f"{xml.stem}{suffix}" for suffix in IMAGE_SUFFIXES]
    image = next((candidate for candidate in candidates if candidate.is_file()), candidates[0])
    width, height = image_size(image, xml)
    declared = (_int(tree.findtext("size/width"), xml), _int(tree.findtext("size/height"), xml))
    if declared != (0, 0) and declared != (width, height):
        raise DataError(f"{xml}: <size> says {declared[0]}x{declared[1]} but {image} is {width}x{height}; the boxes "
                        f"were drawn on another image: re-export the annotations for this one.")
    boxes = []
    for number, item in enumerate(tree.findall("object"), 1):
        label = (item.findtext("name") or "").strip()
        corners = [item.findtext(f"bndbox/{key}") for key in ("xmin", "ymin", "xmax", "ymax")]
        if not label or None in corners:
            raise DataError(f"{xml}: <object> {number} lacks a <name> or a <bndbox> with xmin, ymin, xmax, ymax; "
                            f"fix or delete it.")
        boxes.append(Box(label, *(_float(value, xml) for value in corners)))
    return AnnotatedImage(image, width, height, tuple(boxes), xml)


def _int(text: str | None, source: Path) -> int:
    return int(_float(text, source)) if text else 0


def _float(text: str | None, source: Path) -> float:
    try:
        return float(text or "")
    except ValueError as error:
        raise DataError(f"{source}: {text!r} is not a number where a box corner or size belongs; fix it.") from error


# COCO JSON


def _read_coco(path: Path) -> tuple[list[AnnotatedImage], list[str]]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        categories = {int(entry["id"]): str(entry["name"]) for entry in data["categories"]}
        entries = {int(entry["id"]): entry for entry in data["images"]}
        annotations = data.get("annotations", [])
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as error:
        raise DataError(f"{path}: not COCO JSON with images (id, file_name), categories (id, name) and annotations "
                        f"({type(error).__name__}: {error}); re-export it.") from error
    boxes: dict[int, list[Box]] = {image_id: [] for image_id in entries}
    for number, entry in enumerate(annotations):
        if entry.get("iscrowd"):
            continue
        image_id, category = entry.get("image_id"), entry.get("category_id")
        if image_id not in entries:
            raise DataError(f"{path}: annotation {number} (id {entry.get('id')}) points at image_id {image_id}, which "
                            f"is not in images; fix the id or remove the annotation.")
        if category not in categories:
            raise DataError(f"{path}: annotation {number} (id {entry.get('id')}) has category_id {category}, not one "
                            f"of the categories {sorted(categories)}; fix it or add the category.")
        x, y, width, height = (float(value) for value in entry["bbox"])
        boxes[image_id].append(Box(categories[category], x, y, x + width, y + height))
    images = []
    for image_id, entry in entries.items():
        name = str(entry["file_name"])
        image = next((candidate for candidate in (path.parent / name, path.parent / "images" / name)
                      if candidate.is_file()), path.parent / name)
        width, height = image_size(image, path)
        images.append(AnnotatedImage(image, width, height, tuple(boxes[image_id]), path))
    return images, [categories[key] for key in sorted(categories)]


# YOLO


def _yolo_labels(path: Path) -> Path | None:
    """The labels folder of a YOLO images folder (``<path>/labels``, or ``labels/<split>`` beside
    ``images/<split>``), or None."""
    if (path / "labels").is_dir() and (path / "images").is_dir():
        return path / "labels"
    if path.parent.name == "images" and (path.parent.parent / "labels" / path.name).is_dir():
        return path.parent.parent / "labels" / path.name
    return None


def _images_folder(path: Path) -> Path:
    return path / "images" if (path / "images").is_dir() and (path / "labels").is_dir() else path


def _yolo_classes(path: Path) -> list[str]:
    for folder in (path, path.parent, path.parent.parent):
        for name in CLASS_LIST_FILES:
            candidate = folder / name
            if not candidate.is_file():
                continue
            if candidate.suffix in (".yaml", ".yml"):
                import yaml

                names = (yaml.safe_load(candidate.read_text(encoding="utf-8")) or {}).get("names")
                if isinstance(names, dict):
                    return [str(names[key]) for key in sorted(names)]
                if isinstance(names, list):
                    return [str(name) for name in names]
                raise DataError(f"{candidate}: no `names:` list or mapping of class names; add one.")
            return [line.strip() for line in candidate.read_text(encoding="utf-8").splitlines() if line.strip()]
    raise DataError(f"{path}: a YOLO folder needs its class names: classes.txt (one per line) or data.yaml "
                    f"(names: [...]) in it or up to two folders above.")


def _read_yolo(path: Path) -> tuple[list[AnnotatedImage], list[str]]:
    labels_dir, images_dir = _yolo_labels(path), _images_folder(path)
    classes = _yolo_classes(path)
    images = {image.stem: image for image in sorted(images_dir.iterdir()) if image.suffix.lower() in IMAGE_SUFFIXES}
    label_files = {label.stem: label for label in sorted(labels_dir.glob("*.txt")) if label.name != "classes.txt"}
    for stem in sorted(set(label_files) - set(images)):
        raise DataError(f"{label_files[stem]}: no image {stem}.* in {images_dir}; add the image or remove the file.")
    for stem in sorted(set(images) - set(label_files)):
        raise DataError(f"{images[stem]}: no label file {labels_dir / (stem + '.txt')}; add one (empty for an image "
                        f"with nothing on it) or move the image out.")
    annotated = []
    for stem, image in images.items():
        width, height = image_size(image, label_files[stem])
        boxes = []
        for number, line in enumerate(label_files[stem].read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            fields = line.split()
            try:
                index, cx, cy, w, h = int(fields[0]), *(float(value) for value in fields[1:5])
                if len(fields) != 5:
                    raise ValueError
            except (ValueError, IndexError) as error:
                raise DataError(f"{label_files[stem]}, line {number}: {line.strip()!r} is not `class x_center "
                                f"y_center width height` (class an integer, the rest in [0, 1]); fix the line.") \
                    from error
            label = classes[index] if 0 <= index < len(classes) else f"#{index}"
            boxes.append(Box(label, (cx - w / 2) * width, (cy - h / 2) * height, (cx + w / 2) * width,
                             (cy + h / 2) * height))
        annotated.append(AnnotatedImage(image, width, height, tuple(boxes), label_files[stem]))
    return annotated, classes
