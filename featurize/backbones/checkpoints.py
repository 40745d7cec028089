"""Local checkpoints (`--weights PATH`): read safely, unwrapped to a state dict, checked against the trunk."""

from __future__ import annotations

import os

from common.errors import BackboneError, error_line

STATE_DICT_KEYS = ("state_dict", "model_state_dict", "model")  # where training scripts nest the weights


def load_checkpoint(trunk, path: str | os.PathLike, backbone_name: str, trust_pickle: bool = False) -> None:
    """Load a state dict into `trunk`; head weights are ignored.

    Always with torch's safe loader (tensors and plain containers only). A whole pickled module
    needs the unrestricted loader, which runs code from the file: only with `trust_pickle`."""
    state = state_dict_of(read_checkpoint(path, trust_pickle), path)
    expected = trunk.state_dict()
    _check_fits(expected, state, path, backbone_name)
    trunk.load_state_dict({key: state[key] for key in expected})


def read_checkpoint(path, trust_pickle: bool = False):
    """What torch's safe loader reads from `path`; pickled objects only with `trust_pickle`."""
    import pickle

    import torch

    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        _refuse_pickle(path, error, trust_pickle)
        return _load_trusted(path, error)
    except Exception as error:
        raise BackboneError(f"--weights {path}: not a readable torch checkpoint ({_first_line(error)})") from None


def _refuse_pickle(path, error: Exception, trust_pickle: bool) -> None:
    """Raise unless the file is a checkpoint holding pickled objects and `trust_pickle` lets them load."""
    objects = _pickled_objects(path)
    if not objects:  # not pickled objects: a corrupt or foreign file
        raise BackboneError(f"--weights {path}: not a readable torch checkpoint ({_first_line(error)})") from None
    if not trust_pickle:
        raise BackboneError(
            f"--weights {path}: holds pickled Python objects ({', '.join(objects[:3])}"
            f"{', ...' if len(objects) > 3 else ''}), not only tensors, and loading those runs code from the "
            f"file; refusing. Save a state dict instead (torch.save(model.state_dict(), PATH)), or, only if "
            f"you trust the file, pass --trust-pickle"
        ) from None


def state_dict_of(checkpoint, path) -> dict:
    """The state dict inside what a checkpoint holds: a module, a dict nesting it under a usual key,
    or the state dict itself (keys prefixed `module.` by DataParallel: unprefixed)."""
    state = _unwrapped(checkpoint)
    if not isinstance(state, dict) or not state:
        raise BackboneError(f"--weights {path}: holds no state dict")
    if all(key.startswith("module.") for key in state):  # saved from DataParallel
        state = {key[len("module.") :]: value for key, value in state.items()}
    return state


def _unwrapped(checkpoint):
    """A whole module's state dict, or the dict a training script nested under one of STATE_DICT_KEYS."""
    from torch import nn

    if isinstance(checkpoint, nn.Module):
        checkpoint = checkpoint.state_dict()
    if isinstance(checkpoint, dict):
        nested = next((checkpoint[key] for key in STATE_DICT_KEYS if isinstance(checkpoint.get(key), dict)), None)
        return checkpoint if nested is None else nested
    return checkpoint


def _check_fits(expected: dict, state: dict, path, backbone_name: str) -> None:
    """Refuse a state dict that lacks a key of the trunk's, or has one of another shape."""
    missing = [key for key in expected if key not in state]
    wrong_shape = [key for key in expected if key in state and state[key].shape != expected[key].shape]
    problems = [f"{len(missing)} missing keys (e.g. {', '.join(missing[:3])})"] if missing else []
    if wrong_shape:
        problems.append(f"{len(wrong_shape)} keys of another shape (e.g. {', '.join(wrong_shape[:3])})")
    if problems:
        raise BackboneError(f"--weights {path} does not fit backbone {backbone_name}: {'; '.join(problems)}")


def _pickled_objects(path) -> list[str]:
    """The Python objects (classes, functions) a checkpoint's pickle names beyond what torch's safe
    loader allows, read without running any of them; [] for a file that is not a torch checkpoint.
    Asked of torch itself rather than read from its error message, whose wording changes."""
    import torch

    try:
        return list(torch.serialization.get_unsafe_globals_in_checkpoint(path))
    except Exception:  # not a zip checkpoint, or a damaged one
        return []


def _first_line(error: Exception) -> str:
    """The cause in torch's error, without its paragraph of advice."""
    return error_line(error, after="WeightsUnpickler error:")


def _load_trusted(path, safe_error):
    import torch

    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as error:
        raise BackboneError(
            f"--weights {path}: not a readable torch checkpoint ({_first_line(error)}; "
            f"safe loader: {_first_line(safe_error)})"
        ) from None
