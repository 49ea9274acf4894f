"""Hugging Face Hub access: resolving ``ORG/REPO[@REVISION]`` to a local folder, and pushing.

Only the files a model folder needs are downloaded (JSON, safetensors, tokenizer files,
the model card); pickled checkpoints are never fetched, let alone loaded.
"""
from __future__ import annotations

import os
from pathlib import Path

# Weights and example films shipped with the package: installed, the package data
# site-packages/rrg_core/assets (pyproject.toml maps it onto assets/); in a source checkout,
# the repository's assets/. Named weights load as ``load_model("iu-xray-small")``.
_PACKAGED = Path(__file__).resolve().parent / "assets"
ASSETS = _PACKAGED if _PACKAGED.is_dir() else Path(__file__).resolve().parents[1] / "assets"
NAMED_WEIGHTS = ("synthcxr", "iu-xray-small")
DEFAULT_NAME = "synthcxr"  # embedded, offline

# Everything save_pretrained writes, and nothing executable or pickled.
WEIGHT_FILE_PATTERNS = ["*.json", "*.safetensors", "*.txt", "*.md"]


class WeightsUnavailable(RuntimeError):
    """The requested weights cannot be had (offline, unknown repo or revision, no access)."""


def parse_weights_spec(spec: str) -> tuple[str, str | None]:
    """``"org/repo@v1"`` -> ``("org/repo", "v1")``; ``"org/repo"`` -> ``("org/repo", None)``."""
    repo_id, _, revision = spec.partition("@")
    if repo_id.count("/") != 1 or not all(repo_id.split("/")):
        raise ValueError(f"{spec!r} is neither a local folder nor a Hub repo id of the form ORG/REPO[@REVISION]")
    return repo_id, revision or None


def named_weights(name: str) -> Path:
    """The folder of weights shipped with the package under ``name`` (see NAMED_WEIGHTS)."""
    folder = ASSETS / "weights" / name
    if not (folder / "config.json").is_file():
        raise WeightsUnavailable(f"the named weights {name!r} are not installed with this package (looked in {folder})")
    return folder


def resolve_weights(
    spec: str | os.PathLike | None = None,
    *,
    revision: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    token: str | bool | None = None,
    force_download: bool = False,
) -> Path:
    """Where a weights folder is: a name from NAMED_WEIGHTS (None: the default), a local folder as
    is, or ``ORG/REPO[@REVISION]`` downloaded into the local cache (HF_HUB_OFFLINE honoured)."""
    spec = DEFAULT_NAME if spec is None else spec
    if str(spec) in NAMED_WEIGHTS and not Path(spec).is_dir():
        return named_weights(str(spec))
    path = Path(spec)
    if path.is_dir():
        return path
    if str(spec).startswith((".", "/", "~")) or str(spec).split("@")[0].count("/") > 1:
        raise WeightsUnavailable(f"weights folder {spec} does not exist")
    repo_id, spec_revision = parse_weights_spec(str(spec))
    revision = revision or spec_revision
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    where = f"{repo_id}@{revision}" if revision else repo_id
    try:
        folder = snapshot_download(
            repo_id, revision=revision, allow_patterns=WEIGHT_FILE_PATTERNS, cache_dir=cache_dir, repo_type="model",
            token=token, force_download=force_download,
        )
    except RevisionNotFoundError as err:
        raise WeightsUnavailable(f"the Hub repo {repo_id} has no revision {revision!r}") from err
    except RepositoryNotFoundError as err:
        raise WeightsUnavailable(f"the Hub repo {repo_id} does not exist or is private (log in with `hf auth login`)") from err
    except LocalEntryNotFoundError as err:
        raise WeightsUnavailable(
            f"cannot download weights {where} from the Hugging Face Hub: this machine is offline "
            "(or HF_HUB_OFFLINE=1) and they are not in the local cache; connect and retry, or pass a local folder"
        ) from err
    except (HfHubHTTPError, OSError) as err:
        raise WeightsUnavailable(f"cannot download weights {where} from the Hugging Face Hub: {err}") from err
    return Path(folder)


def push_folder(
    folder: str | os.PathLike,
    repo_id: str,
    *,
    revision: str | None = None,
    private: bool | None = None,
    token: str | None = None,
    commit_message: str = "Upload REVTAF weights",
) -> str:
    """Upload a saved model folder to a Hub model repo (created if needed); returns the commit URL."""
    from huggingface_hub import HfApi

    api = HfApi(token=token)
    api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
    if revision:
        api.create_branch(repo_id, branch=revision, repo_type="model", exist_ok=True)
    info = api.upload_folder(
        folder_path=str(folder),
        repo_id=repo_id,
        repo_type="model",
        revision=revision,
        commit_message=commit_message,
        allow_patterns=WEIGHT_FILE_PATTERNS,
    )
    return str(getattr(info, "commit_url", info))
