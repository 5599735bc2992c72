"""The Hub stage: push a finished model folder to the Hub.

`push_to_hub(OUTPUT_DIR, "USER/NAME")` creates the repository and uploads the folder (never
checkpoints/ or runs/) in one commit with a card (`card.render_model_card`) that names the repo.

A failed push raises `HubError`: one paragraph saying what went wrong and the command that retries
it, with the token scrubbed out; the local folder is left as it was. The token is never logged,
written to a file, or put in a message.
"""

from __future__ import annotations

import logging
import os
import re
import shlex
import shutil
import tempfile
from pathlib import Path
from typing import Iterable, Optional

from . import model_folder
from .card import render_model_card, write_model_card
from .files import write_text

__all__ = [
    "HubError",
    "add_token_argument",
    "IGNORE_PATTERNS",
    "render_model_card",
    "write_model_card",
    "push_to_hub",
    "retry_command",
    "explain_error",
    "network_errors",
    "scrub",
    "token_source",
]

logger = logging.getLogger(__name__)

# Never pushed: Accelerate states, TensorBoard logs, hidden and temporary files, Python caches.
# (fnmatch semantics as huggingface_hub applies them: "*" also crosses "/".)
IGNORE_PATTERNS = [
    f"{model_folder.CHECKPOINTS}/*", f"*/{model_folder.CHECKPOINTS}/*", "runs/*", "*/runs/*",
    ".*", "*/.*", "*.tmp", "*~", "*.lock", "__pycache__/*", "*/__pycache__/*", "*.pyc",
]
# Files a run owns in the repo: a re-push deletes stale ones (a plot a new run did not make,
# shards of an earlier, bigger model whose index would shadow the new weights).
STALE_PATTERNS = [f"{model_folder.PLOTS}/*", "*.safetensors", "*.safetensors.index.json", "pytorch_model*.bin",
                  "pytorch_model.bin.index.json"]


class HubError(RuntimeError):
    """A push that failed: the message is one paragraph with the cause and the retry command."""

    def __init__(self, message: str, *, repo_id: Optional[str] = None, status: Optional[int] = None,
                 retry: Optional[str] = None):
        super().__init__(message)
        self.repo_id, self.status, self.retry = repo_id, status, retry


# ------------------------------------------------------------------------------------------------
# Pushing
# ------------------------------------------------------------------------------------------------


def retry_command(output_dir: str | os.PathLike, hub_model_id: str, private: bool = False) -> str:
    """The command line that retries a push (never with the token: it comes from HF_TOKEN or the login)."""
    command = f"python -m image_classifier push {shlex.quote(str(output_dir))} --hub_model_id {hub_model_id}"
    return command + (" --hub_private_repo" if private else "")


def add_token_argument(parser) -> None:
    """Add `--hub_token` to an argparse (sub-)parser: the one wording for every command that writes to the Hub."""
    parser.add_argument("--hub_token", default=None, metavar="TOKEN",
                        help="Hub token with write access; default: HF_TOKEN, else the cached `hf auth login`. "
                             "Prefer HF_TOKEN: a token on the command line shows in the process list and history.")


def token_source(token: Optional[str]) -> str:
    if token:
        return "the token that was passed in (--hub_token)"
    if os.environ.get("HF_TOKEN"):
        return "the token in HF_TOKEN"
    return "the token of the cached login (`hf auth login`)"


def network_errors() -> tuple[type[BaseException], ...]:
    """Exception classes of the HTTP stacks huggingface_hub may use (httpx2 in 2.x, httpx in 1.x, requests)."""
    classes: list[type[BaseException]] = []
    for module, name in (("httpx2", "HTTPError"), ("httpx", "HTTPError"), ("requests", "RequestException")):
        try:
            classes.append(getattr(__import__(module), name))
        except (ImportError, AttributeError):
            pass
    return tuple(classes)


def scrub(text: str, secrets: Iterable[Optional[str]]) -> str:
    """Remove tokens from text: the known ones verbatim, and anything shaped like a Hub token."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return re.sub(r"hf_[A-Za-z0-9]{20,}", "hf_***", text)


def explain_error(error: BaseException, repo_id: str, namespace: str, endpoint: str,
             token_source: str) -> tuple[str, Optional[int]]:
    """What went wrong, in words a user can act on, and the HTTP status if there was one."""
    from huggingface_hub.errors import HfHubHTTPError, LocalTokenNotFoundError, RepositoryNotFoundError

    response = getattr(error, "response", None)
    status = getattr(response, "status_code", None)
    detail = " ".join(str(error).split())
    if isinstance(error, LocalTokenNotFoundError):
        return ("no Hub token was found. Pass --hub_token, set the HF_TOKEN environment variable, or log in "
                "once with `hf auth login`"), None
    if isinstance(error, HfHubHTTPError) and status is not None:
        server = getattr(error, "server_message", None) or ""
        if status == 401:
            return (f"the Hub refused {token_source} (401 Unauthorized): it is invalid, expired or revoked. Create a "
                    f"token with write access at https://huggingface.co/settings/tokens and pass it with "
                    f"--hub_token or HF_TOKEN, or log in again with `hf auth login --force`"), status
        if status == 403:
            return (f"the token may not write to {repo_id} (403 Forbidden: {server or 'no permission'}). It must "
                    f"be a token with write access, and {namespace} must be your user name or an organisation "
                    f"you may write to"), status
        if isinstance(error, RepositoryNotFoundError) or status == 404:
            return (f"the repository {repo_id} was not found after it was created ({status}); check the name "
                    f"and that the token may see it"), status
        if status == 429:
            return "the Hub is rate-limiting requests (429 Too Many Requests); wait a few minutes", status
        return f"the Hub answered {status}: {server or detail}", status
    if isinstance(error, network_errors()) or isinstance(error, ConnectionError):
        return (f"the Hub at {endpoint} could not be reached ({type(error).__name__}: {detail}). Check the "
                f"network connection, a proxy, or HF_ENDPOINT if you use a mirror"), None
    return f"{type(error).__name__}: {detail}", status


def _commit_message(metrics: dict) -> str:
    accuracy = metrics.get("test_accuracy")
    return f"Upload model: test accuracy {accuracy:.4f}" if isinstance(accuracy, (int, float)) else "Upload model"


def _commit_description(metrics: dict, training: dict, data: dict) -> str:
    parts = []
    if metrics.get("test_f1") is not None:
        parts.append(f"test F1 (macro) {metrics['test_f1']:.4f}")
    if metrics.get("test_loss") is not None:
        parts.append(f"test loss {metrics['test_loss']:.4f}")
    if data.get("dataset") or training.get("dataset"):
        parts.append(f"dataset {data.get('dataset') or training.get('dataset')}")
    if training.get("model"):
        parts.append(f"model {training['model']}")
    if metrics.get("epochs_trained") is not None:
        parts.append(f"{metrics['epochs_trained']} epochs")
    return "; ".join(parts)


def _stage(out: Path, stage: Path, card: str) -> None:
    """Mirror the pushable files of `out` into `stage` (hard links where possible) plus the new card."""
    from huggingface_hub.utils import filter_repo_objects

    files = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    for rel in filter_repo_objects(files, ignore_patterns=IGNORE_PATTERNS + [model_folder.CARD]):
        target = stage / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(out / rel, target)  # no copy of the weights; the upload only reads
        except OSError:
            shutil.copy2(out / rel, target)
    (stage / model_folder.CARD).write_text(card, encoding="utf-8")


def push_to_hub(output_dir: str | os.PathLike, hub_model_id: str, private: bool = False,
                token: Optional[str] = None, commit_message: Optional[str] = None) -> str:
    """Push the model folder to the Hub repository `hub_model_id` ("USER/NAME"); return the repo URL.

    Creates the repo when missing (private when asked; a public repo that exists is not pushed to
    when `private` is set), uploads everything but checkpoints/, runs/ and hidden or temporary files
    in one commit whose message carries the test accuracy, with a card that names the repo. The
    token comes from `token`, else HF_TOKEN, else the cached login. Any failure raises `HubError`;
    the local card is only rewritten (with the repo id) once the push succeeded.
    """
    from huggingface_hub import HfApi
    from huggingface_hub.utils import get_token

    out = Path(output_dir)
    repo_id = str(hub_model_id or "").strip()
    token = token or None  # an empty --hub_token means "the default token"
    try:
        secrets = [token, get_token() if token is None else None]  # scrubbed from every message
    except Exception:  # get_token raises only for a misconfigured OIDC exchange; whoami reports it below
        secrets = [token]
    retry = retry_command(output_dir, repo_id or "USER/NAME", private)

    def fail(what: str, status: Optional[int] = None) -> HubError:
        message = (f"Pushing {out} to the Hub as {repo_id or '(no repo id)'} failed: {what}. The local folder was "
                   f"not changed. Fix the cause, then retry with: {retry}"
                   + (" (with the token in HF_TOKEN, or --hub_token)" if token else ""))
        return HubError(scrub(message, secrets), repo_id=repo_id, status=status, retry=scrub(retry, secrets))

    if not (out / model_folder.CONFIG).is_file() or not any((out / n).is_file() for n in model_folder.WEIGHT_FILES):
        raise fail(f"{out} is not a finished model folder (it needs config.json and model weights); train "
                   f"first with `python train.py --output_dir {out}`")
    if not repo_id or repo_id.count("/") > 1:
        raise fail("--hub_model_id must be USER/NAME (or NAME, to use the token's user name)")

    # A fresh client reads the endpoint now (HF_ENDPOINT, or huggingface_hub.constants.ENDPOINT).
    api = HfApi(token=token)
    endpoint = api.endpoint
    namespace = repo_id.split("/")[0] if "/" in repo_id else "?"
    try:
        metrics = model_folder.read_json(out, model_folder.METRICS, {})
        user = api.whoami()  # fails early, with a clear message, on a missing or refused token
        if "/" not in repo_id:
            repo_id = f"{user['name']}/{repo_id}"
            retry = retry_command(output_dir, repo_id, private)
        namespace = repo_id.split("/")[0]
        repo_url = api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        repo_id = repo_url.repo_id or repo_id
        if private and not api.repo_info(repo_id, repo_type="model").private:
            raise fail(f"{repo_id} already exists and is public, but a private repository was asked for; make it "
                       f"private on the Hub first, or push without --hub_private_repo")
        card = str(render_model_card(out, hub_model_id=repo_id))
        message = commit_message or _commit_message(metrics)
        description = _commit_description(metrics, model_folder.read_json(out, model_folder.TRAINING_CONFIG, {}),
                                          model_folder.read_json(out, model_folder.DATA_SUMMARY, {}))
        # The card with the repo id goes up from a staging copy: the folder itself changes only
        # after the push succeeded.
        with tempfile.TemporaryDirectory(prefix="image-classifier-push-") as tmp:
            _stage(out, Path(tmp), card)
            commit = api.upload_folder(repo_id=repo_id, repo_type="model", folder_path=tmp,
                                       commit_message=message, commit_description=description,
                                       ignore_patterns=list(IGNORE_PATTERNS), delete_patterns=STALE_PATTERNS)
    except HubError:
        raise
    except (OSError, ValueError, *network_errors()) as error:  # HfHubHTTPError is an OSError
        what, status = explain_error(error, repo_id, namespace, endpoint, token_source(token))
        raise fail(what, status) from None  # from None: the original text could carry secrets
    write_text(out / model_folder.CARD, card)
    logger.info("Pushed %s to %s (%s)", out, repo_url, getattr(commit, "commit_url", ""))
    return str(repo_url)
