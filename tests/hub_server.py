"""A local stand-in for the Hugging Face Hub, for tests (no network is reachable here).

It speaks the part of the Hub's HTTP API that `huggingface_hub` 2.x, `transformers` and `timm` use to
push a folder and load it back: whoami, repo create/delete/settings, validate-yaml, preupload,
commit (NDJSON), repo info, tree, and HEAD/GET `resolve`, for models, datasets and Spaces (plus a
Space's runtime, secrets and variables). Files are kept in memory, one snapshot per commit.

Tokens: `tokens` maps a token to `(user, role)`; role "write" may create and commit in the user's
namespace (or an org listed in `orgs`), "read" gets 403 on writes. A missing or unknown token gets
401 on anything that needs one. Anonymous reads of public repos work, as on the Hub.

    with HubStandIn(tokens={"hf_abc": ("alice", "write")}) as hub:
        os.environ["HF_ENDPOINT"] = hub.url   # before huggingface_hub is imported (or in a subprocess)

Every request is logged in `hub.requests` as (method, path, status), never headers, so tests may
search the log for secrets. Requests to routes the stand-in does not know are answered 404 and
listed in `hub.unhandled`, so a test can tell a missing route from a real 404.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Optional
from urllib.parse import parse_qs, unquote, urlsplit

__all__ = ["HubStandIn", "Repo", "Commit", "git_blob_oid"]

# URL prefix of each repo type, as on the Hub: /{id}, /datasets/{id}, /spaces/{id}.
URL_PREFIX = {"model": "", "dataset": "datasets/", "space": "spaces/"}
API_PLURAL = {"models": "model", "datasets": "dataset", "spaces": "space"}
SPACE_SDKS = ("gradio", "docker", "static", "streamlit")
# What the Hub writes into every new repo's first commit.
GITATTRIBUTES = b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n*.bin filter=lfs diff=lfs merge=lfs -text\n"


def git_blob_oid(content: bytes) -> str:
    """The git blob sha1 of `content`: the Hub's ETag and `oid` for regular (non-LFS) files."""
    return hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.000Z")


@dataclass
class Commit:
    oid: str
    title: str
    description: str
    date: str
    files: dict[str, bytes]  # the whole tree after this commit


@dataclass
class Repo:
    repo_type: str
    repo_id: str
    private: bool
    sdk: Optional[str] = None
    created_at: str = field(default_factory=_now)
    commits: list[Commit] = field(default_factory=list)  # oldest first
    secrets: dict[str, str] = field(default_factory=dict)
    variables: dict[str, str] = field(default_factory=dict)
    variable_descriptions: dict[str, str] = field(default_factory=dict)

    def variables_reply(self) -> dict[str, dict]:
        """The Space's variables as the Hub lists them: {key: {value, description?, updatedAt}}."""
        return {k: {"value": v, **({"description": self.variable_descriptions[k]}
                                   if k in self.variable_descriptions else {}), "updatedAt": _now()}
                for k, v in self.variables.items()}

    @property
    def head(self) -> Commit:
        return self.commits[-1]

    def at(self, revision: str) -> Optional[Commit]:
        """The commit a revision names: "main" (or HEAD) or a full or short commit sha."""
        if revision in ("main", "HEAD", "refs/heads/main"):
            return self.head
        for commit in reversed(self.commits):
            if len(revision) >= 7 and commit.oid.startswith(revision):
                return commit
        return None


class HubError(Exception):
    """An error reply: status, message (also sent as X-Error-Message) and optional X-Error-Code."""

    def __init__(self, status: int, message: str, code: Optional[str] = None, body: Optional[dict] = None):
        super().__init__(message)
        self.status, self.message, self.code, self.body = status, message, code, body


class HubStandIn:
    """The server and its state. `start()`/`stop()`, or use it as a context manager."""

    def __init__(self, tokens: Optional[dict[str, tuple[str, str]]] = None,
                 orgs: Optional[dict[str, list[str]]] = None, host: str = "127.0.0.1", port: int = 0):
        self.tokens = dict(tokens or {})
        self.orgs = dict(orgs or {})  # user -> organisations they may write to
        self.repos: dict[tuple[str, str], Repo] = {}
        self.requests: list[tuple[str, str, int]] = []
        self.unhandled: list[tuple[str, str]] = []
        self._failures: list[list[Any]] = []  # [method, path regex, status, times left]
        self._lock = threading.RLock()
        self._server = ThreadingHTTPServer((host, port), _make_handler(self))
        self._server.daemon_threads = True
        self._thread: Optional[threading.Thread] = None

    # -- lifecycle -----------------------------------------------------------------------------------

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> "HubStandIn":
        self._thread = threading.Thread(target=self._server.serve_forever, name="hub-stand-in", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> "HubStandIn":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- helpers for tests ----------------------------------------------------------------------------

    def add_token(self, token: str, user: str, role: str = "write") -> None:
        self.tokens[token] = (user, role)

    def fail(self, method: str, path_pattern: str, status: int, times: int = 1) -> None:
        """Answer the next `times` requests whose path matches the regex with `status` (fault injection)."""
        with self._lock:
            self._failures.append([method.upper(), re.compile(path_pattern), status, times])

    def repo(self, repo_id: str, repo_type: str = "model") -> Optional[Repo]:
        with self._lock:
            return self.repos.get((repo_type, repo_id))

    def files(self, repo_id: str, repo_type: str = "model", revision: str = "main") -> dict[str, bytes]:
        """The files of a repo at a revision (a copy); KeyError when the repo does not exist."""
        with self._lock:
            repo = self.repos[(repo_type, repo_id)]
            commit = repo.at(revision)
            if commit is None:
                raise KeyError(revision)
            return dict(commit.files)

    def create_repo(self, repo_id: str, repo_type: str = "model", private: bool = False,
                    sdk: Optional[str] = None) -> Repo:
        """Create a repo directly (as if someone else had created it), with the Hub's initial commit."""
        with self._lock:
            repo = Repo(repo_type, repo_id, private, sdk)
            files = {".gitattributes": GITATTRIBUTES}
            if repo_type == "space":  # the Hub writes a README with the SDK for a new Space
                files["README.md"] = f"---\ntitle: {repo_id.split('/')[1]}\nsdk: {sdk}\n---\n".encode()
            repo.commits.append(Commit(_new_oid(), "initial commit", "", _now(), files))
            self.repos[(repo_type, repo_id)] = repo
            return repo

    # -- request handling (called from the handler threads) -------------------------------------------

    def _injected_failure(self, method: str, path: str) -> Optional[int]:
        with self._lock:
            for failure in self._failures:
                if failure[0] == method and failure[1].search(path) and failure[3] > 0:
                    failure[3] -= 1
                    return failure[2]
        return None

    def _user(self, headers) -> Optional[tuple[str, str]]:
        """(user, role) for the request's bearer token; None when anonymous. Unknown token: 401."""
        auth = headers.get("Authorization") or ""
        if not auth:
            return None
        token = auth[len("Bearer "):] if auth.startswith("Bearer ") else auth
        if token not in self.tokens:
            # The Hub's wording; huggingface_hub keys its own 401 handling on it.
            raise HubError(401, "Invalid credentials in Authorization header")
        return self.tokens[token]

    def _require_write(self, headers, namespace: str) -> str:
        who = self._user(headers)
        if who is None:
            raise HubError(401, "You must be authenticated to do this (no token was sent)")
        user, role = who
        if role != "write":
            raise HubError(403, "This token has read access only; a write token is needed")
        if namespace != user and namespace not in self.orgs.get(user, []):
            raise HubError(403, f"You don't have the rights to write to the namespace {namespace}")
        return user

    def _readable(self, headers, repo_type: str, repo_id: str) -> Repo:
        """The repo if the requester may read it; 404 RepoNotFound (401 when anonymous) otherwise, as on the Hub."""
        who = self._user(headers)
        repo = self.repos.get((repo_type, repo_id))
        namespace = repo_id.split("/")[0]
        allowed = repo is not None and (not repo.private or (
            who is not None and (who[0] == namespace or namespace in self.orgs.get(who[0], []))))
        if not allowed:
            raise HubError(401 if who is None else 404, "Repository not found", code="RepoNotFound")
        return repo

    def handle(self, method: str, raw_path: str, headers, body: bytes) -> tuple[int, dict[str, str], bytes]:
        split = urlsplit(raw_path)
        query = {k: v[-1] for k, v in parse_qs(split.query).items()}
        parts = [unquote(p) for p in split.path.split("/")[1:]]  # each segment unquoted after splitting
        injected = self._injected_failure(method, split.path)
        if injected is not None:
            raise HubError(injected, f"injected failure {injected}")
        with self._lock:
            if parts[:1] == ["api"]:
                return self._api(method, parts[1:], query, headers, body)
            return self._resolve(method, parts, headers)

    def _api(self, method: str, parts: list[str], query: dict, headers, body: bytes):
        if parts == ["whoami-v2"] and method == "GET":
            who = self._user(headers)
            if who is None:
                raise HubError(401, "Invalid credentials in Authorization header")
            user, role = who
            return _json({"type": "user", "id": uuid.uuid5(uuid.NAMESPACE_DNS, user).hex, "name": user,
                          "fullname": user.title(), "isPro": False, "canPay": False,
                          "orgs": [{"type": "org", "name": org} for org in self.orgs.get(user, [])],
                          "auth": {"type": "access_token",
                                   "accessToken": {"displayName": "stand-in", "role": role}}})
        if parts == ["agent-harnesses"] and method == "GET":  # huggingface_hub 2.4's user-agent registry
            return _json({"standardEnvVars": [], "harnesses": {}})
        if parts == ["repos", "create"] and method == "POST":
            return self._create(json.loads(body or b"{}"), headers)
        if parts == ["repos", "delete"] and method == "DELETE":
            payload = json.loads(body or b"{}")
            repo_type = payload.get("type") or "model"
            repo_id = f"{payload.get('organization') or ''}/{payload['name']}".lstrip("/")
            self._require_write(headers, repo_id.split("/")[0])
            if self.repos.pop((repo_type, repo_id), None) is None:
                raise HubError(404, "Repository not found", code="RepoNotFound")
            return _json({})
        if parts == ["validate-yaml"] and method == "POST":
            return self._validate_yaml(json.loads(body or b"{}"))
        if len(parts) >= 3 and parts[0] in API_PLURAL:
            repo_type, repo_id, rest = API_PLURAL[parts[0]], f"{parts[1]}/{parts[2]}", parts[3:]
            return self._repo_api(method, repo_type, repo_id, rest, query, headers, body)
        raise _unhandled()

    def _create(self, payload: dict, headers):
        repo_type = payload.get("type") or "model"
        if repo_type not in URL_PREFIX:
            raise HubError(400, f"Invalid repo type {repo_type!r}")
        namespace = payload.get("organization")
        user = self._require_write(headers, namespace or (self._user(headers) or ("",))[0])
        repo_id = f"{namespace or user}/{payload['name']}"
        if not re.fullmatch(r"[\w.-]+/[\w.-]+", repo_id) or "--" in repo_id or ".." in repo_id:
            raise HubError(400, f"Invalid repo name {repo_id!r}")
        url = f"{self.url}/{URL_PREFIX[repo_type]}{repo_id}"
        if (repo_type, repo_id) in self.repos:
            # huggingface_hub reads `url` from this reply too when exist_ok=True.
            raise HubError(409, f"You already created this {repo_type} repo", body={"url": url})
        sdk = payload.get("sdk")
        if repo_type == "space" and sdk not in SPACE_SDKS:
            raise HubError(400, f"Invalid Space SDK {sdk!r}; one of {SPACE_SDKS}")
        private = payload.get("visibility") == "private" or bool(payload.get("private"))
        self.create_repo(repo_id, repo_type, private=private, sdk=sdk)
        return _json({"url": url, "name": repo_id, "id": uuid.uuid4().hex})

    def _validate_yaml(self, payload: dict):
        content = payload.get("content") or ""
        match = re.match(r"^---\n(.*?)\n---\n", content, flags=re.S)
        if match:
            import yaml

            try:
                data = yaml.safe_load(match.group(1))
            except yaml.YAMLError as error:
                return _json({"errors": [{"message": f"invalid YAML: {error}"}]}, 400)
            if data is not None and not isinstance(data, dict):
                return _json({"errors": [{"message": "metadata must be a mapping"}]}, 400)
        return _json({"errors": [], "warnings": []})

    def _repo_api(self, method: str, repo_type: str, repo_id: str, rest: list[str], query: dict, headers, body):
        if method == "GET" and (not rest or rest[0] == "revision"):
            repo = self._readable(headers, repo_type, repo_id)
            revision = "/".join(rest[1:]) or "main"
            commit = repo.at(revision)
            if commit is None:
                raise HubError(404, f"Invalid rev id: {revision}", code="RevisionNotFound")
            return _json(self._info(repo, commit))
        if method == "GET" and rest[:1] == ["tree"] and len(rest) >= 2:
            repo = self._readable(headers, repo_type, repo_id)
            commit = repo.at(rest[1])
            if commit is None:
                raise HubError(404, f"Invalid rev id: {rest[1]}", code="RevisionNotFound")
            return _json(_tree(commit.files, "/".join(rest[2:]), query.get("recursive") in ("True", "true", "1")))
        if method == "POST" and rest[:1] == ["preupload"]:
            repo = self._writable(headers, repo_type, repo_id)
            commit = repo.at("/".join(rest[1:]) or "main")
            if commit is None:
                raise HubError(404, "Revision not found", code="RevisionNotFound")
            files = json.loads(body)["files"]
            # Everything goes into the commit as a regular git blob: no LFS or Xet upload happens.
            return _json({"files": [
                {"path": f["path"], "uploadMode": "regular", "shouldIgnore": False,
                 "oid": git_blob_oid(commit.files[f["path"]]) if f["path"] in commit.files else None}
                for f in files]})
        if method == "POST" and rest[:1] == ["commit"]:
            repo = self._writable(headers, repo_type, repo_id)
            return self._commit(repo, "/".join(rest[1:]) or "main", query, body)
        if method == "PUT" and rest == ["settings"]:
            repo = self._writable(headers, repo_type, repo_id)
            payload = json.loads(body or b"{}")
            if "private" in payload:
                repo.private = bool(payload["private"])
            if "visibility" in payload:
                repo.private = payload["visibility"] == "private"
            return _json({})
        if repo_type == "space" and rest == ["runtime"] and method == "GET":
            repo = self._readable(headers, repo_type, repo_id)
            return _json(_runtime(repo))
        if repo_type == "space" and rest in (["secrets"], ["variables"]) and method in ("POST", "DELETE"):
            repo = self._writable(headers, repo_type, repo_id)
            store = repo.secrets if rest == ["secrets"] else repo.variables
            payload = json.loads(body or b"{}")
            if not payload.get("key"):
                raise HubError(400, "key is required")
            if method == "POST":
                store[payload["key"]] = payload.get("value", "")
                if rest == ["variables"] and payload.get("description") is not None:
                    repo.variable_descriptions[payload["key"]] = payload["description"]
            else:
                store.pop(payload["key"], None)
                if rest == ["variables"]:
                    repo.variable_descriptions.pop(payload["key"], None)
            # The Hub answers a variable change with every variable (huggingface_hub parses it); secrets: {}.
            return _json(repo.variables_reply() if rest == ["variables"] else {})
        if repo_type == "space" and rest == ["variables"] and method == "GET":
            repo = self._readable(headers, repo_type, repo_id)
            return _json(repo.variables_reply())
        raise _unhandled()

    def _writable(self, headers, repo_type: str, repo_id: str) -> Repo:
        self._require_write(headers, repo_id.split("/")[0])
        repo = self.repos.get((repo_type, repo_id))
        if repo is None:
            raise HubError(404, "Repository not found", code="RepoNotFound")
        return repo

    def _commit(self, repo: Repo, revision: str, query: dict, body: bytes):
        if query.get("create_pr"):
            raise HubError(400, "the stand-in does not support pull requests")
        parent = repo.at(revision)
        if parent is None or parent is not repo.head:
            raise HubError(400, f"the stand-in only commits to main, not {revision!r}")
        lines = [json.loads(line) for line in body.splitlines() if line.strip()]
        if not lines or lines[0].get("key") != "header":
            raise HubError(400, "the first NDJSON line must be the commit header")
        header = lines[0]["value"]
        if header.get("parentCommit") and header["parentCommit"] != repo.head.oid:
            raise HubError(412, "A commit has happened since. Please refresh and try again.")
        files = dict(parent.files)
        for line in lines[1:]:
            key, value = line["key"], line["value"]
            if key == "file":
                if value.get("encoding", "base64") != "base64":
                    raise HubError(400, f"unsupported encoding {value.get('encoding')!r}")
                files[value["path"]] = base64.b64decode(value["content"])
            elif key == "deletedFile":
                if value["path"] not in files:
                    raise HubError(404, "A file with this name doesn't exist", code="EntryNotFound")
                del files[value["path"]]
            elif key == "deletedFolder":
                prefix = value["path"].rstrip("/") + "/"
                files = {p: c for p, c in files.items() if not p.startswith(prefix)}
            else:  # lfsFile: preupload never asks for LFS, so a client sending one is confused
                raise HubError(400, f"the stand-in does not accept {key!r} operations")
        commit = Commit(_new_oid(), header.get("summary") or "", header.get("description") or "", _now(), files)
        repo.commits.append(commit)
        url = f"{self.url}/{URL_PREFIX[repo.repo_type]}{repo.repo_id}/commit/{commit.oid}"
        return _json({"success": True, "commitOid": commit.oid, "commitUrl": url, "pullRequestUrl": None})

    def _info(self, repo: Repo, commit: Commit) -> dict:
        info = {"_id": uuid.uuid5(uuid.NAMESPACE_URL, repo.repo_id).hex, "id": repo.repo_id,
                "author": repo.repo_id.split("/")[0], "sha": commit.oid, "lastModified": commit.date,
                "createdAt": repo.created_at, "private": repo.private, "disabled": False, "gated": False,
                "downloads": 0, "likes": 0, "tags": [],
                "siblings": [{"rfilename": path} for path in sorted(commit.files)]}
        if repo.repo_type == "model":
            info["modelId"] = repo.repo_id
            config = commit.files.get("config.json")
            if config:
                try:
                    info["config"] = {k: v for k, v in json.loads(config).items()
                                      if k in ("architectures", "model_type", "auto_map")}
                except ValueError:
                    pass
        if repo.repo_type == "space":
            info.update(sdk=repo.sdk, runtime=_runtime(repo), subdomain=repo.repo_id.replace("/", "-").lower())
        return info

    def _resolve(self, method: str, parts: list[str], headers):
        """HEAD/GET /[datasets/|spaces/]{ns}/{name}/resolve/{rev}/{path}."""
        repo_type = "model"
        if parts[:1] in (["datasets"], ["spaces"]):
            repo_type, parts = API_PLURAL[parts[0]], parts[1:]
        if method not in ("GET", "HEAD") or len(parts) < 5 or parts[2] != "resolve":
            raise _unhandled()
        repo = self._readable(headers, repo_type, f"{parts[0]}/{parts[1]}")
        commit = repo.at(parts[3])
        if commit is None:
            raise HubError(404, f"Invalid rev id: {parts[3]}", code="RevisionNotFound")
        path = "/".join(parts[4:])
        if path not in commit.files:
            raise HubError(404, "Entry not found", code="EntryNotFound", body=None)
        content = commit.files[path]
        extra = {"X-Repo-Commit": commit.oid, "ETag": f'"{git_blob_oid(content)}"',
                 "Accept-Ranges": "bytes", "Content-Type": "application/octet-stream"}
        status, ranged = 200, content
        match = re.fullmatch(r"bytes=(\d+)-(\d*)", headers.get("Range") or "")
        if match:  # resumed downloads
            start = int(match.group(1))
            end = int(match.group(2)) if match.group(2) else len(content) - 1
            status, ranged = 206, content[start:end + 1]
            extra["Content-Range"] = f"bytes {start}-{start + len(ranged) - 1}/{len(content)}"
        return status, extra, ranged


def _new_oid() -> str:
    return hashlib.sha1(uuid.uuid4().bytes + str(time.time_ns()).encode()).hexdigest()


def _unhandled() -> HubError:
    return HubError(404, "stand-in: unsupported route", code="StandInUnhandled")


def _json(value: Any, status: int = 200) -> tuple[int, dict[str, str], bytes]:
    return status, {"Content-Type": "application/json"}, json.dumps(value).encode()


def _runtime(repo: Repo) -> dict:
    return {"stage": "RUNNING" if repo.commits else "NO_APP_FILE", "sdk": repo.sdk,
            "hardware": {"current": "cpu-basic", "requested": "cpu-basic"},
            "storage": None, "gcTimeout": 172800, "replicas": {"current": 1, "requested": 1}}


def _tree(files: dict[str, bytes], folder: str, recursive: bool) -> list[dict]:
    """Entries of `folder` (root when ""): files and sub-folders, as the Hub's tree API lists them."""
    prefix = folder.strip("/") + "/" if folder.strip("/") else ""
    entries: dict[str, dict] = {}
    for path, content in sorted(files.items()):
        if not path.startswith(prefix):
            continue
        rest = path[len(prefix):].split("/")
        for depth in range(1, len(rest)):  # the folders on the way
            sub = prefix + "/".join(rest[:depth])
            if recursive or depth == 1:
                entries.setdefault(sub, {"type": "directory", "oid": hashlib.sha1(sub.encode()).hexdigest(),
                                         "size": 0, "path": sub})
        if recursive or len(rest) == 1:
            entries[path] = {"type": "file", "oid": git_blob_oid(content), "size": len(content), "path": path}
    if prefix and not entries:
        raise HubError(404, f"{folder} does not exist", code="EntryNotFound")
    return list(entries.values())


def _make_handler(hub: HubStandIn):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as the clients' connection pools expect

        def _body(self) -> bytes:
            if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                chunks = []
                while True:
                    size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                    if size == 0:
                        self.rfile.readline()
                        return b"".join(chunks)
                    chunks.append(self.rfile.read(size))
                    self.rfile.readline()
            length = int(self.headers.get("Content-Length") or 0)
            return self.rfile.read(length) if length else b""

        def _serve(self) -> None:
            body = self._body()
            try:
                status, headers, content = hub.handle(self.command, self.path, self.headers, body)
            except HubError as error:
                if error.code == "StandInUnhandled":
                    with hub._lock:
                        hub.unhandled.append((self.command, self.path))
                status = error.status
                headers = {"Content-Type": "application/json", "X-Error-Message": error.message}
                if error.code and error.code != "StandInUnhandled":
                    headers["X-Error-Code"] = error.code
                content = json.dumps({"error": error.message, **(error.body or {})}).encode()
            except Exception as error:  # a bug in the stand-in: say so rather than hang the client
                status, headers = 500, {"Content-Type": "text/plain"}
                content = f"stand-in crashed: {type(error).__name__}: {error}".encode()
            with hub._lock:
                hub.requests.append((self.command, self.path, status))
            self.send_response(status)
            headers.setdefault("X-Request-Id", uuid.uuid4().hex[:12])
            for key, value in headers.items():
                self.send_header(key, value)
            self.send_header("Content-Length", str(len(content)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(content)

        do_GET = do_HEAD = do_POST = do_PUT = do_DELETE = _serve

        def log_message(self, format, *args):  # keep test output clean
            pass

    return Handler
