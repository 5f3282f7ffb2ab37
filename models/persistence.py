"""Saving forecasters to a directory: a pickle plus a small JSON manifest.

Every forecaster in :mod:`models` is a plain Python object (numpy/pandas state, LightGBM boosters,
Prophet models), so one pickle per model directory is enough for the MLflow pyfunc wrapper.
"""

from __future__ import annotations

import hashlib
import json
import pickle
from pathlib import Path
from typing import Any, TypeVar

MODEL_FILE = "model.pkl"
MANIFEST_FILE = "forecaster.json"

T = TypeVar("T")


def save_object(obj: Any, path: Path, family: str) -> None:
    """Pickle ``obj`` into ``path/model.pkl`` and write a manifest naming its family.

    Args:
        obj: The fitted forecaster.
        path: Target directory (created if missing).
        family: Model family name, stored in the manifest.
    """
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    with open(path / MODEL_FILE, "wb") as handle:
        pickle.dump(obj, handle, protocol=pickle.HIGHEST_PROTOCOL)
    manifest = {"family": family, "class": f"{type(obj).__module__}.{type(obj).__qualname__}"}
    (path / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2))


def saved_digest(path: Path) -> str:
    """A digest of what :func:`save_object` wrote to ``path``: equal for byte-identical saves.

    Args:
        path: Directory written by :func:`save_object`.

    Returns:
        The SHA-256 of the manifest and the model file, in hex.

    Raises:
        ValueError: If the directory has no model file.
    """
    file = Path(path) / MODEL_FILE
    if not file.exists():
        raise ValueError(f"no saved forecaster at {file}")
    digest = hashlib.sha256()
    for part in (Path(path) / MANIFEST_FILE, file):
        if part.exists():
            with open(part, "rb") as handle:
                digest.update(hashlib.file_digest(handle, "sha256").digest())
    return digest.hexdigest()


def load_object(path: Path, expected: type[T]) -> T:
    """Read a forecaster written by :func:`save_object` and check its type.

    Args:
        path: Directory written by :func:`save_object`.
        expected: Class the object must be an instance of.

    Returns:
        The unpickled forecaster.

    Raises:
        ValueError: If the directory has no model file or holds another class.
    """
    file = Path(path) / MODEL_FILE
    if not file.exists():
        raise ValueError(f"no saved forecaster at {file}")
    with open(file, "rb") as handle:
        obj = pickle.load(handle)
    if not isinstance(obj, expected):
        message = f"{file} holds a {type(obj).__name__}, expected {expected.__name__}"
        raise ValueError(message)  # noqa: TRY004 - a wrong artefact is bad input, not a bug
    return obj
