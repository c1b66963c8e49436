"""A Hugging Face hub on loopback, serving model repos from folders, for download tests.

It speaks the part of the hub's HTTP API that the installed huggingface_hub client uses for
`HfApi.model_info` (with `files_metadata`), `list_repo_files` / `list_repo_tree`,
`resolve_revision`, `hf_hub_download` and `snapshot_download`:

  GET  /api/models/{repo}[/revision/{rev}]       model info; `blobs=true` adds sizes and LFS data
  GET  /api/models/{repo}/tree/{rev}[/{path}]    the file tree, one page (`recursive` honoured)
  HEAD/GET /{repo}/resolve/{rev}/{file}          a file: ETag (git blob id), X-Repo-Commit,
                                                 Content-Length; an LFS file (weights) answers
                                                 302 to the "CDN" with X-Linked-Etag (sha256)
                                                 and X-Linked-Size, as the hub does
  HEAD/GET /cdn/{repo}/{sha256}                  an LFS file's bytes

The CDN is the same server named `localhost` instead of `127.0.0.1`: another origin to the
client, so it takes the redirect as the hub's (the file's metadata is on the 302 itself, and the
Authorization header is not sent on). Xet is never offered (no xetHash in listings, no X-Xet-*
headers), so the client downloads over plain HTTP. Errors carry the hub's X-Error-Code
(RepoNotFound, RevisionNotFound, EntryNotFound), which the client maps to its exceptions. Each
repo has one commit, `main`; every request is logged, to count what a client asked for.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, unquote, urlsplit

# stored in LFS on the hub (by the repo's .gitattributes): weights and other big binaries
LFS_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf", ".onnx", ".msgpack", ".h5")
CHUNK = 1 << 20


@dataclass(frozen=True)
class HubFile:
    path: str  # inside the repo (posix)
    source: Path
    size: int
    oid: str  # git blob id: of the file, or of its LFS pointer
    sha256: str | None  # set for an LFS file


@dataclass(frozen=True)
class HubRepo:
    repo_id: str
    commit: str
    files: dict[str, HubFile]

    def folders(self) -> set[str]:
        return {
            "/".join(parts[:i])
            for parts in (p.split("/") for p in self.files)
            for i in range(1, len(parts))
        }


@dataclass(frozen=True)
class HubRequest:
    method: str
    host: str
    path: str  # unquoted, without the query


def _git_oid(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def _lfs_pointer(sha256: str, size: int) -> bytes:
    return (
        f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n".encode()
    )


def _hub_file(path: str, source: Path) -> HubFile:
    data = source.read_bytes()
    if not path.endswith(LFS_SUFFIXES):
        return HubFile(path, source, len(data), _git_oid(data), None)
    sha256 = hashlib.sha256(data).hexdigest()
    return HubFile(path, source, len(data), _git_oid(_lfs_pointer(sha256, len(data))), sha256)


class LoopbackHub:
    """The server, its repos and its request log; `url` is what HF_ENDPOINT names."""

    def __init__(self) -> None:
        self.repos: dict[str, HubRepo] = {}
        self._log: list[HubRequest] = []
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self._server.daemon_threads = True
        self._server.hub = self  # type: ignore[attr-defined]
        self.port = self._server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.cdn_url = f"http://localhost:{self.port}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def add(self, repo_id: str, folder: Path) -> HubRepo:
        """Serve every file below `folder` as the repo `repo_id` (read now; bytes at request)."""
        files = {
            p.relative_to(folder).as_posix(): p for p in sorted(folder.rglob("*")) if p.is_file()
        }
        table = {name: _hub_file(name, source) for name, source in files.items()}
        listing = "".join(f"{f.path}\0{f.oid}\n" for f in table.values()).encode()
        repo = HubRepo(repo_id, _git_oid(repo_id.encode() + b"\0" + listing), table)
        self.repos[repo_id] = repo
        return repo

    @property
    def requests(self) -> list[HubRequest]:
        with self._lock:
            return list(self._log)

    def clear_log(self) -> None:
        with self._lock:
            self._log.clear()

    def downloaded(self, repo_id: str) -> list[str]:
        """The repo's files whose bytes were sent (GET of a file or of its LFS blob), sorted."""
        repo = self.repos[repo_id]
        by_sha = {f.sha256: f.path for f in repo.files.values() if f.sha256}
        sent = set()
        for r in self.requests:
            if r.method != "GET":
                continue
            resolve = f"/{repo_id}/resolve/"
            if r.path.startswith(resolve):
                name = r.path[len(resolve) :].split("/", 1)[-1]
                if name in repo.files and repo.files[name].sha256 is None:
                    sent.add(name)
            elif r.path.startswith(f"/cdn/{repo_id}/"):
                sha = r.path.rsplit("/", 1)[-1]
                if sha in by_sha:
                    sent.add(by_sha[sha])
        return sorted(sent)

    def record(self, request: HubRequest) -> None:
        with self._lock:
            self._log.append(request)

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    timeout = 30  # an idle kept-alive connection is dropped after this

    @property
    def hub(self) -> LoopbackHub:
        return self.server.hub  # type: ignore[attr-defined, no-any-return]

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: the hub's log is `LoopbackHub.requests`."""

    def do_GET(self) -> None:
        self._route(body=True)

    def do_HEAD(self) -> None:
        self._route(body=False)

    # ---- routing

    def _route(self, body: bool) -> None:
        url = urlsplit(self.path)
        segments = [unquote(s) for s in url.path.split("/")[1:]]
        query = parse_qs(url.query)
        host = self.headers.get("Host", "")
        self.hub.record(HubRequest(self.command, host, "/".join(["", *segments])))
        if segments[:2] == ["api", "models"]:
            self._api(segments[2:], query, body)
        elif segments[:1] == ["cdn"] and len(segments) >= 2:
            self._cdn(segments[1:], body)
        elif "resolve" in segments:
            self._resolve(segments, body)
        else:
            self._error(404, None, "Not found", body)

    def _repo(self, segments: list[str]) -> tuple[HubRepo | None, list[str]]:
        """The repo a path starts with (ORG/NAME, else NAME) and the rest of the path."""
        for n in (2, 1):
            repo = self.hub.repos.get("/".join(segments[:n]))
            if repo is not None:
                return repo, segments[n:]
        return None, segments[2:]

    def _commit(self, repo: HubRepo, revision: str, body: bool) -> bool:
        if revision in ("main", repo.commit):
            return True
        self._error(404, "RevisionNotFound", f"Invalid rev id: {revision}", body)
        return False

    # ---- /api/models

    def _api(self, segments: list[str], query: dict[str, list[str]], body: bool) -> None:
        repo, rest = self._repo(segments)
        if repo is None:
            self._error(404, "RepoNotFound", "Repository not found", body)
        elif not rest:
            self._json(self._model_info(repo, _flag(query, "blobs")), body)
        elif rest[0] == "revision" and len(rest) == 2:
            if self._commit(repo, rest[1], body):
                self._json(self._model_info(repo, _flag(query, "blobs")), body)
        elif rest[0] == "tree" and len(rest) >= 2:
            if self._commit(repo, rest[1], body):
                self._tree(repo, "/".join(rest[2:]), _flag(query, "recursive"), body)
        else:
            self._error(404, None, "Not found", body)

    def _model_info(self, repo: HubRepo, blobs: bool) -> dict[str, Any]:
        siblings = []
        for f in repo.files.values():
            sibling: dict[str, Any] = {"rfilename": f.path}
            if blobs:
                sibling |= {"size": f.size, "blobId": f.oid}
                if f.sha256 is not None:
                    pointer = len(_lfs_pointer(f.sha256, f.size))
                    sibling["lfs"] = {"size": f.size, "sha256": f.sha256, "pointerSize": pointer}
            siblings.append(sibling)
        return {
            "_id": repo.commit[:24],
            "id": repo.repo_id,
            "modelId": repo.repo_id,
            "sha": repo.commit,
            "private": False,
            "gated": False,
            "disabled": False,
            "tags": [],
            "siblings": siblings,
        }

    def _tree(self, repo: HubRepo, under: str, recursive: bool, body: bool) -> None:
        folders = repo.folders()
        if under and under not in folders:
            self._error(404, "EntryNotFound", f"{under} does not exist on 'main'", body)
            return
        prefix = f"{under}/" if under else ""

        def listed(path: str) -> bool:
            return path.startswith(prefix) and (recursive or "/" not in path[len(prefix) :])

        entries: list[dict[str, Any]] = [
            {"type": "directory", "oid": _git_oid(d.encode()), "size": 0, "path": d}
            for d in sorted(folders)
            if listed(d)
        ]
        for f in repo.files.values():
            if listed(f.path):
                entry: dict[str, Any] = {
                    "type": "file",
                    "oid": f.oid,
                    "size": f.size,
                    "path": f.path,
                }
                if f.sha256 is not None:
                    pointer = len(_lfs_pointer(f.sha256, f.size))
                    entry["lfs"] = {"oid": f.sha256, "size": f.size, "pointerSize": pointer}
                entries.append(entry)
        self._json(entries, body)

    # ---- files

    def _resolve(self, segments: list[str], body: bool) -> None:
        repo, rest = self._repo(segments)
        if repo is None or rest[:1] != ["resolve"]:
            self._error(404, "RepoNotFound", "Repository not found", body)
            return
        if len(rest) < 3:
            self._error(404, "EntryNotFound", "Entry not found", body)
            return
        if not self._commit(repo, rest[1], body):
            return
        f = repo.files.get("/".join(rest[2:]))
        commit = {"X-Repo-Commit": repo.commit}
        if f is None:
            self._error(404, "EntryNotFound", "Entry not found", body, commit)
        elif f.sha256 is None:
            self._file(f, {**commit, "ETag": f'"{f.oid}"'}, body)
        else:
            location = f"{self.hub.cdn_url}/cdn/{quote(repo.repo_id)}/{f.sha256}"
            self._send(
                302,
                b"",
                {
                    **commit,
                    "ETag": f'"{f.oid}"',
                    "X-Linked-Etag": f'"{f.sha256}"',
                    "X-Linked-Size": str(f.size),
                    "Location": location,
                },
                body,
            )

    def _cdn(self, segments: list[str], body: bool) -> None:
        repo = self.hub.repos.get("/".join(segments[:-1]))
        found = [f for f in (repo.files.values() if repo else ()) if f.sha256 == segments[-1]]
        if not found:
            self._send(404, b"NoSuchKey", {"Content-Type": "text/plain"}, body)
            return
        self._file(found[0], {"ETag": f'"{found[0].sha256}"'}, body)

    def _file(self, f: HubFile, headers: dict[str, str], body: bool) -> None:
        self.send_response(200)
        for name, value in {
            **headers,
            "Content-Type": "application/octet-stream",
            "Content-Length": str(f.size),
        }.items():
            self.send_header(name, value)
        self.end_headers()
        if body:
            for chunk in _chunks(f.source):
                self.wfile.write(chunk)

    # ---- answers

    def _json(self, data: Any, body: bool) -> None:
        self._send(200, json.dumps(data).encode(), {"Content-Type": "application/json"}, body)

    def _error(
        self,
        status: int,
        code: str | None,
        message: str,
        body: bool,
        extra: dict[str, str] | None = None,
    ) -> None:
        headers = {"Content-Type": "application/json", "X-Error-Message": message, **(extra or {})}
        if code is not None:
            headers["X-Error-Code"] = code
        self._send(status, json.dumps({"error": message}).encode(), headers, body)

    def _send(self, status: int, payload: bytes, headers: dict[str, str], body: bool) -> None:
        self.send_response(status)
        for name, value in {**headers, "Content-Length": str(len(payload))}.items():
            self.send_header(name, value)
        self.end_headers()
        if body:
            self.wfile.write(payload)


def _flag(query: dict[str, list[str]], name: str) -> bool:
    return query.get(name, ["false"])[-1].lower() in ("1", "true")


def _chunks(path: Path) -> Iterator[bytes]:
    with path.open("rb") as f:
        while chunk := f.read(CHUNK):  # bounded by the file's size
            yield chunk
