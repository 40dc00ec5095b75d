"""Sim profiles as JSON files: calibrated profiles (`expert-router calibrate --out`, `sim --profile FILE`)."""

from __future__ import annotations

import json
from dataclasses import asdict, fields
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from system.engines.sim.profiles import Profile

# profiles.py loads the calibrated/*.json files through this module while it is itself being imported, so
# this module reaches profiles.py only inside functions (by then every name it needs is defined there)

PROFILE_FORMAT = "expert-router-sim-profile/1"


class ProfileFileError(ValueError):
    """A profile JSON file that cannot be read or does not describe a valid profile."""


def profile_to_dict(p: Profile, **extra: object) -> dict[str, object]:
    """JSON-ready dict of a profile (hardware and model nested); `extra` keys (e.g. calibration) added."""
    return {"format": PROFILE_FORMAT, **asdict(p), **extra}


def _build(cls: type, data: object, where: str) -> object:
    if not isinstance(data, dict):
        raise ProfileFileError(f"{where}: expected an object, got {type(data).__name__}")
    names = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ProfileFileError(f"{where}: unknown field(s) {', '.join(unknown)}")
    try:
        return cls(**data)
    except TypeError as e:
        raise ProfileFileError(f"{where}: {e}") from None


def profile_from_dict(data: dict[str, object]) -> Profile:
    """Inverse of profile_to_dict; keys `format` and `calibration` (the fit's provenance) are ignored."""
    body = {k: v for k, v in data.items() if k not in ("format", "calibration")}
    if "hardware" not in body or "model" not in body:
        raise ProfileFileError("a profile needs 'hardware' and 'model' objects")
    from system.engines.sim.profiles import QUANT_BITS, Hardware, ModelSpec, Profile

    body["hardware"] = _build(Hardware, body["hardware"], "hardware")
    body["model"] = _build(ModelSpec, body["model"], "model")
    prof = _build(Profile, body, "profile")
    assert isinstance(prof, Profile)
    if prof.quant not in QUANT_BITS:
        raise ProfileFileError(f"profile: unknown quant {prof.quant!r} (known: {', '.join(QUANT_BITS)})")
    return prof


def save_profile(p: Profile, path: str | Path, **extra: object) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(profile_to_dict(p, **extra), indent=2) + "\n")
    return path


def load_profile_file(path: str | Path) -> Profile:
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ProfileFileError(f"cannot read profile file {path}: {e}") from None
    if not isinstance(data, dict):
        raise ProfileFileError(f"{path}: a profile file holds one JSON object")
    try:
        return profile_from_dict(data)
    except ProfileFileError as e:
        raise ProfileFileError(f"{path}: {e}") from None


def resolve_profile(name_or_path: str) -> Profile:
    """A registered profile by name, or a profile JSON file (a path ending in .json or an existing file)."""
    from system.engines.sim.profiles import PROFILES, get_profile

    if name_or_path in PROFILES:
        return PROFILES[name_or_path]
    if name_or_path.endswith(".json") or Path(name_or_path).is_file():
        return load_profile_file(name_or_path)
    return get_profile(name_or_path)
