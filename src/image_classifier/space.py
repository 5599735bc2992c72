"""Deploy the Gradio app (`app.py`) as a Hugging Face Space that serves a model pushed to the Hub.

    python -m image_classifier deploy-space --space_id USER/NAME --hub_model_id USER/MODEL [--private]

`deploy_space` creates the Space (SDK gradio) when missing and uploads, in one commit, what it needs
to build and run: `app.py`, a `requirements.txt` (this checkout's, minus the editable install of the
project: the package travels in `src/` and app.py puts it on the path), the `src/image_classifier`
package, and a README whose front matter tells the Hub how to run it (`sdk: gradio`, `sdk_version`
equal to the installed Gradio, `app_file: app.py`). It then sets the Space variable `MODEL_ID`, which
app.py reads. A failure raises `hub.HubError`: one paragraph with the cause and the command that
retries it; the token is never printed.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Optional

from .hub import HubError, add_token_argument, explain_error, network_errors, scrub, token_source

__all__ = ["deploy_space", "SpaceDeployment", "space_readme", "space_requirements", "add_deploy_space_command",
           "REPO_ROOT", "PACKAGE_IGNORE"]

logger = logging.getLogger(__name__)

# The checkout this package lives in (src/image_classifier/space.py -> the repository root).
REPO_ROOT = Path(__file__).resolve().parents[2]
PACKAGE = Path(__file__).resolve().parent
# Never uploaded from the package: caches, compiled files, editor and OS leftovers.
PACKAGE_IGNORE = ("__pycache__", "*.pyc", "*.pyo", ".*", "*~", "*.swp", "*.tmp")
_ID = re.compile(r"[A-Za-z0-9][\w.-]*")


@dataclass
class SpaceDeployment:
    """What `deploy_space` did: the Space's URL and id, the files it uploaded, and notes for the user."""

    url: str
    space_id: str
    model_id: str
    files: list[str]
    commit_url: Optional[str] = None
    notes: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        return self.url


def gradio_version() -> str:
    """The installed Gradio's version: what the Space must run (`sdk_version`), or the app may differ."""
    return metadata.version("gradio")


def space_requirements(requirements: Path) -> str:
    """requirements.txt for the Space: the checkout's runtime requirements without the project install.

    Lines that install the project itself (`-e .`, `.`) or pull other files (`-r`, `-c`) are dropped: a
    Space installs requirements.txt before the rest of the repository is there, and app.py imports the
    package from src/ instead.
    """
    kept = ["# Runtime requirements of the image-classifier app (written by `python -m image_classifier "
            "deploy-space`).", "# The Space runs the Gradio named by sdk_version in README.md; the package itself "
            "is in src/."]
    for line in requirements.read_text(encoding="utf-8").splitlines():
        text = line.split("#", 1)[0].strip()
        if not text:
            continue
        if text.startswith(("-e", "--editable", "-r", "--requirement", "-c", "--constraint", ".")):
            continue
        kept.append(text)
    return "\n".join(kept) + "\n"


def space_readme(space_id: str, model_id: str, sdk_version: str) -> str:
    """The Space's README.md: Spaces front matter (how the Hub builds and runs it) and a short description."""
    import yaml

    name = space_id.split("/")[-1]
    front = {
        "title": name.replace("-", " ").replace("_", " ").strip() or name,
        "emoji": "🖼️",
        "colorFrom": "indigo",
        "colorTo": "blue",
        "sdk": "gradio",
        "sdk_version": sdk_version,
        "app_file": "app.py",
        "pinned": False,
        "models": [model_id],
        "short_description": "Image classifier demo: upload a picture, get top-5 labels",
    }
    meta = yaml.safe_dump(front, sort_keys=False, allow_unicode=True).strip()
    return f"""---
{meta}
---

# {front["title"]}

A Gradio demo of the image classifier [{model_id}](https://huggingface.co/{model_id}): upload, paste or
photograph an image and get the five most probable classes; the *Batch* tab classifies many files and
returns a CSV. The model panel shows the dataset, the classes and the test accuracy and F1 the model was
evaluated with.

The model is chosen by the Space variable `MODEL_ID` (now `{model_id}`); change it under
*Settings → Variables and secrets*. A private model also needs an `HF_TOKEN` secret with read access.

Call it from Python:

```python
from gradio_client import Client, handle_file

client = Client("{space_id}")
result = client.predict(handle_file("my_image.png"), api_name="/predict")
print(result["label"], result["confidences"][:3])
```

Deployed with `python -m image_classifier deploy-space --space_id {space_id} --hub_model_id {model_id}`.
"""


def retry_command(space_id: str, model_id: str, private: bool = False) -> str:
    """The command line that retries a deployment (never with the token)."""
    command = f"python -m image_classifier deploy-space --space_id {space_id} --hub_model_id {model_id}"
    return command + (" --private" if private else "")


def _stage(stage: Path, root: Path, space_id: str, model_id: str) -> list[str]:
    """Write the Space's files into `stage`; return their paths in the repository, sorted."""
    shutil.copy2(root / "app.py", stage / "app.py")
    (stage / "requirements.txt").write_text(space_requirements(root / "requirements.txt"), encoding="utf-8")
    (stage / "README.md").write_text(space_readme(space_id, model_id, gradio_version()), encoding="utf-8")
    shutil.copytree(PACKAGE, stage / "src" / "image_classifier", ignore=shutil.ignore_patterns(*PACKAGE_IGNORE))
    return sorted(p.relative_to(stage).as_posix() for p in stage.rglob("*") if p.is_file())


def deploy_space(space_id: str, hub_model_id: str, token: Optional[str] = None, private: bool = False,
                 repo_root: str | os.PathLike = REPO_ROOT) -> SpaceDeployment:
    """Create (or update) the Gradio Space `space_id` serving the Hub model `hub_model_id`.

    Either id may be "NAME" alone: the token's user name is put in front. The model must already be on
    the Hub (push it first with `python -m image_classifier push`). The token comes from `token`, else
    HF_TOKEN, else the cached login, and needs write access to the Space's namespace. Raises `HubError`.
    """
    from huggingface_hub import HfApi
    from huggingface_hub.errors import RepositoryNotFoundError
    from huggingface_hub.utils import get_token

    root = Path(repo_root)
    space_id, model_id = str(space_id or "").strip(), str(hub_model_id or "").strip()
    token = token or None  # an empty --hub_token means "the default token"
    try:
        secrets = [token, get_token() if token is None else None]  # scrubbed from every message
    except Exception:  # a misconfigured OIDC exchange; whoami reports it below
        secrets = [token]
    retry = retry_command(space_id or "USER/NAME", model_id or "USER/MODEL", private)

    def fail(what: str, status: Optional[int] = None) -> HubError:
        message = (f"Deploying the app to the Space {space_id or '(no Space id)'} failed: {what}. Fix the cause, "
                   f"then retry with: {retry}" + (" (with the token in HF_TOKEN, or --hub_token)" if token else ""))
        return HubError(scrub(message, secrets), repo_id=space_id, status=status, retry=scrub(retry, secrets))

    problem = _check_inputs(space_id, model_id, root)
    if problem:
        raise fail(problem)

    api = HfApi(token=token)
    endpoint = api.endpoint
    current, namespace = "checking the token", space_id.split("/")[0] if "/" in space_id else "?"
    notes: list[str] = []
    try:
        user = api.whoami()["name"]  # fails early, with a clear message, on a missing or refused token
        if "/" not in space_id:
            space_id = f"{user}/{space_id}"
        if "/" not in model_id:
            model_id = f"{user}/{model_id}"
        retry = retry_command(space_id, model_id, private)
        namespace = space_id.split("/")[0]

        current = f"looking up the model {model_id}"
        try:
            model = api.model_info(model_id)
        except RepositoryNotFoundError:
            raise fail(f"the model {model_id} is not on the Hub (or this token may not see it). Push it first: "
                       f"python -m image_classifier push OUTPUT_DIR --hub_model_id {model_id}", 404) from None
        if getattr(model, "private", False):
            notes.append(f"{model_id} is private: add a secret HF_TOKEN (a token with read access to it) under "
                         f"the Space's Settings -> Variables and secrets, or the app cannot load it")

        current = f"creating the Space {space_id}"
        repo_url = api.create_repo(space_id, repo_type="space", space_sdk="gradio", private=private, exist_ok=True)
        space_id = repo_url.repo_id or space_id
        if private and not api.repo_info(space_id, repo_type="space").private:
            raise fail(f"{space_id} already exists and is public, but a private Space was asked for; make it "
                       f"private on the Hub first, or deploy without --private")

        current = f"uploading the app to {space_id}"
        files, commit = _upload_app(api, root, space_id, model_id)

        current = f"setting the MODEL_ID variable of {space_id}"
        api.add_space_variable(space_id, "MODEL_ID", model_id,
                               description="The model the app serves (a Hub id or a folder in the Space)")
    except HubError:
        raise
    except (OSError, ValueError, KeyError, *network_errors()) as error:  # HfHubHTTPError is an OSError
        what, status = explain_error(error, space_id, namespace, endpoint, token_source(token))
        what = what.replace("was not found after it was created", "was not found")
        raise fail(f"{current}: {what}", status) from None  # from None: the original text could carry secrets
    logger.info("Deployed the app to %s (%s)", repo_url, getattr(commit, "commit_url", ""))
    return SpaceDeployment(url=str(repo_url), space_id=space_id, model_id=model_id, files=files,
                           commit_url=getattr(commit, "commit_url", None), notes=notes)


def _check_inputs(space_id: str, model_id: str, root: Path) -> Optional[str]:
    """What is wrong with the ids or the checkout, before anything goes to the Hub; None when nothing."""
    for flag, value, example in (("--space_id", space_id, "USER/NAME"), ("--hub_model_id", model_id, "USER/MODEL")):
        if not value or value.count("/") > 1 or not all(_ID.fullmatch(part) for part in value.split("/")):
            return f"{flag} must be {example} (or NAME alone, to use the token's user name), not {value!r}"
    missing = [name for name in ("app.py", "requirements.txt") if not (root / name).is_file()]
    if missing:
        return (f"{' and '.join(missing)} not found in {root}; deploy-space uploads the app from a checkout of "
                f"the project (run it there)")
    return None


def _upload_app(api, root: Path, space_id: str, model_id: str):
    """Stage the app's files and upload them to the Space in one commit; returns (files, commit info)."""
    with tempfile.TemporaryDirectory(prefix="image-classifier-space-") as tmp:
        files = _stage(Path(tmp), root, space_id, model_id)
        commit = api.upload_folder(
            repo_id=space_id, repo_type="space", folder_path=tmp,
            commit_message=f"Deploy the image classifier app for {model_id}",
            commit_description=f"app.py, requirements.txt, src/image_classifier and README.md (Gradio "
                               f"{gradio_version()}); MODEL_ID={model_id}",
            delete_patterns=["src/image_classifier/*"])  # modules removed from the package go too
    return files, commit


# ------------------------------------------------------------------------------------------------
# Command line
# ------------------------------------------------------------------------------------------------

def add_deploy_space_command(subparsers) -> None:
    """Add the `deploy-space` sub-command to an argparse sub-parsers object (see `image_classifier.__main__`)."""
    parser = subparsers.add_parser(
        "deploy-space", help="deploy the Gradio app as a Hugging Face Space serving a model on the Hub",
        description="Create a Gradio Space (when missing), upload app.py, requirements.txt, the src/image_classifier "
                    "package and a README with the Spaces front matter in one commit, and set the Space variable "
                    "MODEL_ID to the model. Push the model first with `push`.")
    parser.add_argument("--space_id", required=True, metavar="USER/NAME",
                        help="the Space to create or update (NAME alone uses the token's user name)")
    parser.add_argument("--hub_model_id", required=True, metavar="USER/MODEL",
                        help="the model on the Hub the app serves (set as the Space variable MODEL_ID)")
    add_token_argument(parser)
    parser.add_argument("--private", action="store_true", help="create the Space as private")
    parser.set_defaults(run=deploy_space_command)


def deploy_space_command(args: argparse.Namespace) -> int:
    result = deploy_space(args.space_id, args.hub_model_id, token=args.hub_token, private=args.private)
    print(result.url)
    for note in result.notes:
        print(f"note: {note}")
    return 0
