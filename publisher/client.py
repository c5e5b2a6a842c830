"""The OCI distribution client: blobs, manifests, tags, referrers, against one registry.

Blobs stream from disk in both directions, so memory stays flat whatever their size:

- push: ``HEAD`` first and skip what exists; a cross-repository mount when the caller names a
  repository of the same registry that holds the blob (a ``202`` answer falls back to an upload);
  a monolithic ``POST`` + ``PUT`` up to ``monolithic_threshold`` bytes, chunked ``PATCH`` above it,
  always following the newest ``Location``. After a failed chunk the client asks the registry where
  the upload stands (``GET``, ``Range``) and resumes from there; a registry that cannot say (Debian's
  2.8.2 refuses once a chunk broke off mid-body: its ``_state`` offset no longer matches the bytes it
  kept) gets the blob again in a fresh upload. ``Docker-Content-Digest`` is checked.
- pull: hashed while streaming into a temporary file beside the destination, resumed with a
  ``Range`` request after a dropped connection, renamed into place only when size and digest match.

Manifests are pushed as their exact bytes with their media type, fetched with the OCI ``Accept``
types, and verified against the digest asked for. Registries without the referrers API get the
``sha256-<hex>`` fallback tag index, read-modify-written under a lock per subject (Debian's
distribution 2.8.2 ignores ``If-Match``, so serialization is this client's job).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import re
import tempfile
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from pathlib import Path

import httpx

from manifests.atomic import fsync_dir
from manifests.digest import Digest
from manifests.errors import DocumentError, VerificationError
from manifests.mediatypes import MediaType
from manifests.oci import MAX_DOCUMENT_BYTES, Descriptor, OCIIndex, parse_json_object
from manifests.vocabulary import Reason
from publisher.auth import Credentials, repository_scope
from publisher.errors import (
    MAX_ERROR_BODY,
    ErrorCode,
    PublishError,
    RegistryError,
    RegistryUnavailable,
)
from publisher.reference import validate_repository, validate_tag
from publisher.retry import RetryPolicy
from publisher.session import (
    Session,
    Timeouts,
    TransientFailure,
    header_int,
    join_url,
    read_capped,
    release,
)
from publisher.transfer import (
    BlobAction,
    BlobResult,
    BlobSource,
    Download,
    Manifest,
    Opener,
    check_header_digest,
    content_type,
    file_chunks,
    header_digest,
)

__all__ = [
    "RegistryClient",
    "BlobSource",
    "BlobAction",
    "BlobResult",
    "Manifest",
    "MANIFEST_ACCEPT",
    "DEFAULT_CHUNK_SIZE",
    "DEFAULT_MONOLITHIC_THRESHOLD",
]

# Each chunk costs a round trip during which nothing is sent (the next PATCH needs the newest
# Location): 16 MiB chunks pushed a single blob ~10% slower than 64 MiB ones on loopback. A failed
# chunk or monolithic PUT resends at most this much to a registry that can resume.
DEFAULT_CHUNK_SIZE = 64 * 1024 * 1024
DEFAULT_MONOLITHIC_THRESHOLD = 128 * 1024 * 1024
DEFAULT_BLOB_CAP = 16 * 1024 * 1024 * 1024
MAX_TAG_LIST = 4 * 1024 * 1024
MAX_TAG_PAGES = 1000
_MAX_REDIRECTS = 5

MANIFEST_ACCEPT = ", ".join(
    (
        MediaType.OCI_MANIFEST,
        MediaType.OCI_INDEX,
        MediaType.DOCKER_MANIFEST,
        MediaType.DOCKER_MANIFEST_LIST,
    )
)

_UPLOAD_GONE = frozenset({ErrorCode.BLOB_UPLOAD_INVALID, ErrorCode.BLOB_UPLOAD_UNKNOWN})
_LINK_NEXT = re.compile(r'<([^>]*)>\s*;\s*rel="?next"?')
_RANGE = re.compile(r"^(?:bytes=)?0-([0-9]{1,19})$")


class RegistryClient:
    """A client for one registry (``host[:port]``).

    ``client`` may be an injected ``httpx.Client`` (tests use ``httpx.MockTransport``). ``insecure``
    means plain http and is only accepted for loopback registries; it logs that it is in force.
    """

    def __init__(
        self,
        registry: str,
        *,
        client: httpx.Client | None = None,
        insecure: bool = False,
        credentials: Credentials | None = None,
        jobs: int = 4,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        monolithic_threshold: int = DEFAULT_MONOLITHIC_THRESHOLD,
        timeouts: Timeouts | None = None,
        retry: RetryPolicy | None = None,
        sleep: Callable[[float], None] | None = None,
        clock: Callable[[], float] | None = None,
    ) -> None:
        if jobs < 1:
            raise ValueError("jobs must be at least 1")
        if chunk_size < 1 or monolithic_threshold < 0:
            raise ValueError("chunk_size must be positive and monolithic_threshold not negative")
        extra: dict[str, Callable[..., object]] = {}
        if sleep is not None:
            extra["sleep"] = sleep
        if clock is not None:
            extra["clock"] = clock
        self.session = Session(
            registry,
            client=client,
            insecure=insecure,
            credentials=credentials,
            retry=retry,
            timeouts=timeouts,
            **extra,  # type: ignore[arg-type]
        )
        self.registry = registry
        self.jobs = jobs
        self.chunk_size = chunk_size
        self.monolithic_threshold = monolithic_threshold
        self._referrer_locks: dict[tuple[str, Digest], threading.Lock] = {}
        self._locks_guard = threading.Lock()
        self._referrers_api: dict[str, bool] = {}
        # What this client itself last wrote or read under each (repo, tag): see known_tag.
        self._tags: dict[tuple[str, str], Descriptor] = {}

    def close(self) -> None:
        self.session.close()

    def __enter__(self) -> RegistryClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------------------------ basics

    def ping(self) -> str:
        """Check that this is an OCI/Docker v2 registry we may talk to; returns its API version header."""
        resp = self.session.send("GET", "/v2/", what=f"{self.registry}: ping")
        self.session.expect(resp, (200,), what=f"{self.registry}: ping")
        release(resp)
        return str(resp.headers.get("docker-distribution-api-version", ""))

    @staticmethod
    def _scopes(repo: str, *actions: str) -> tuple[str, ...]:
        return (repository_scope(validate_repository(repo), actions),)

    # ------------------------------------------------------------------------------------- blobs

    def blob_exists(self, repo: str, digest: Digest) -> int | None:
        """The blob's size if ``repo`` has it, else ``None``."""
        what = f"{repo}: HEAD blob {digest}"
        resp = self.session.send(
            "HEAD", f"/v2/{repo}/blobs/{digest}", scopes=self._scopes(repo, "pull"), what=what
        )
        release(resp)
        if resp.status_code == 404:
            return None
        self.session.expect(resp, (200,), what=what)
        check_header_digest(resp, digest, what=what)
        length = header_int(resp, "content-length")
        if length is None:
            raise RegistryError(f"{what}: the registry sent no Content-Length")
        return length

    def push_blob(
        self,
        repo: str,
        digest: Digest,
        size: int,
        source: Path | Opener,
        *,
        mount_from: str | None = None,
    ) -> BlobResult:
        """Make ``repo`` hold the blob: skip it if present, mount it if possible, else upload it."""
        src = (
            BlobSource(digest=digest, size=size, path=Path(source), mount_from=mount_from)
            if isinstance(source, str | os.PathLike)
            else BlobSource(digest=digest, size=size, opener=source, mount_from=mount_from)
        )
        return self.push_source(repo, src)

    def push_source(self, repo: str, src: BlobSource) -> BlobResult:
        validate_repository(repo)
        if src.mount_from is not None:
            validate_repository(src.mount_from)
        restarts = 0
        resumes = [0]
        while True:
            try:
                return self._push_once(repo, src, resumes, restarts)
            except TransientFailure as exc:
                restarts += 1
                if restarts >= self.session.retry.attempts:
                    raise RegistryUnavailable(
                        f"{repo}: pushing blob {src.digest} failed {restarts} times: {exc.message}",
                        hint="the registry or the network is failing; try again later",
                    ) from exc
                self.session.backoff(restarts - 1, exc.retry_after)

    def _push_once(self, repo: str, src: BlobSource, resumes: list[int], restarts: int) -> BlobResult:
        existing = self.blob_exists(repo, src.digest)
        if existing is not None:
            if existing != src.size:
                raise RegistryError(
                    f"{repo}: the registry holds {src.digest} with {existing} bytes, expected {src.size}"
                )
            return BlobResult(digest=src.digest, size=src.size, action=BlobAction.EXISTED, restarts=restarts)
        what = f"{repo}: upload {src.digest}"
        scopes = self._scopes(repo, "pull", "push")
        params: list[tuple[str, str]] | None = None
        if src.mount_from is not None and src.mount_from != repo:
            scopes += self._scopes(src.mount_from, "pull")
            params = [("mount", str(src.digest)), ("from", src.mount_from)]
        resp = self.session.send(
            "POST",
            f"/v2/{repo}/blobs/uploads/",
            scopes=scopes,
            params=params,
            headers={"Content-Length": "0"},
            what=what,
        )
        release(self.session.expect(resp, (201, 202), what=what))
        if resp.status_code == 201:
            check_header_digest(resp, src.digest, what=what)
            return BlobResult(digest=src.digest, size=src.size, action=BlobAction.MOUNTED, restarts=restarts)
        location = self._location(resp, what=what)
        if src.size <= self.monolithic_threshold:
            final = self._put(location, src, 0, src.size, scopes, what=what)
        else:
            final = self._upload_chunks(location, src, scopes, resumes, what=what)
        check_header_digest(final, src.digest, what=what)
        return BlobResult(
            digest=src.digest,
            size=src.size,
            action=BlobAction.UPLOADED,
            resumes=resumes[0],
            restarts=restarts,
        )

    def _location(self, resp: httpx.Response, *, what: str) -> httpx.URL:
        loc = resp.headers.get("location")
        if not loc:
            raise RegistryError(f"{what}: the registry answered {resp.status_code} without a Location")
        return self.session.url(loc)

    def _put(
        self,
        location: httpx.URL,
        src: BlobSource,
        offset: int,
        length: int,
        scopes: tuple[str, ...],
        *,
        what: str,
    ) -> httpx.Response:
        """The closing PUT, carrying the bytes from ``offset`` (all of them for a monolithic upload)."""
        url = location.copy_merge_params({"digest": str(src.digest)})
        resp = self.session.send(
            "PUT",
            url,
            scopes=scopes,
            headers={"Content-Type": "application/octet-stream", "Content-Length": str(length)},
            body=file_chunks(src, offset, length) if length else b"",
            retry_transient=False,
            what=what,
        )
        release(self.session.expect(resp, (201,), what=what))
        return resp

    def _upload_status(
        self, location: httpx.URL, scopes: tuple[str, ...], *, what: str
    ) -> tuple[int, httpx.URL]:
        """Where an interrupted upload stands: (bytes the registry holds, newest Location)."""
        resp = self.session.send("GET", location, scopes=scopes, what=f"{what}: upload status")
        try:
            release(self.session.expect(resp, (204, 200), what=f"{what}: upload status"))
        except RegistryError as exc:
            if exc.status in (400, 404, 416) or exc.code in _UPLOAD_GONE:
                raise TransientFailure(
                    f"{what}: the registry cannot resume the upload ({exc.code}); starting again"
                ) from exc
            raise
        return self._range_end(resp, what=what), self._location(resp, what=what)

    @staticmethod
    def _range_end(resp: httpx.Response, *, what: str) -> int:
        value = resp.headers.get("range", "0-0").strip()
        m = _RANGE.match(value)
        if m is None:
            raise RegistryError(f"{what}: the registry sent an unreadable Range {value[:64]!r}")
        end = int(m.group(1))
        # "0-0" means nothing (distribution says 0-0 for 0 bytes); otherwise the end is inclusive.
        return 0 if end == 0 else end + 1

    def _upload_chunks(
        self,
        location: httpx.URL,
        src: BlobSource,
        scopes: tuple[str, ...],
        resumes: list[int],
        *,
        what: str,
    ) -> httpx.Response:
        offset = 0
        failures = 0
        while offset < src.size:
            length = min(self.chunk_size, src.size - offset)
            try:
                resp = self.session.send(
                    "PATCH",
                    location,
                    scopes=scopes,
                    headers={
                        "Content-Type": "application/octet-stream",
                        "Content-Length": str(length),
                        "Content-Range": f"{offset}-{offset + length - 1}",
                    },
                    body=file_chunks(src, offset, length),
                    retry_transient=False,
                    what=what,
                )
                self._expect_chunk_accepted(resp, offset, what=what)
                location = self._location(resp, what=what)
                end = self._range_end(resp, what=what)
                if end != offset + length:
                    raise RegistryError(
                        f"{what}: after a chunk the registry holds {end} bytes, expected {offset + length}"
                    )
                offset = end
                failures = 0
            except TransientFailure as exc:
                failures += 1
                if failures >= self.session.retry.attempts:
                    raise
                self.session.backoff(failures - 1, exc.retry_after)
                held, location = self._upload_status(location, scopes, what=what)
                if held > src.size:
                    raise TransientFailure(
                        f"{what}: the registry holds more bytes than the blob has"
                    ) from exc
                resumes[0] += 1
                offset = held
        return self._put(location, src, offset, 0, scopes, what=what)

    def _expect_chunk_accepted(self, resp: httpx.Response, offset: int, *, what: str) -> None:
        if resp.status_code == 416:
            release(resp)
            raise TransientFailure(f"{what}: the registry refused the chunk at {offset}")
        release(self.session.expect(resp, (202,), what=what))

    def push_blobs(
        self, repo: str, blobs: Sequence[BlobSource], *, jobs: int | None = None
    ) -> list[BlobResult]:
        """Push several blobs, up to ``jobs`` (default: the client's) at once. The first failure
        stops the rest from starting and is raised."""
        workers = max(1, min(jobs or self.jobs, len(blobs) or 1))
        unique: dict[Digest, BlobSource] = {}
        for b in blobs:
            unique.setdefault(b.digest, b)
        if workers == 1:
            done = {d: self.push_source(repo, b) for d, b in unique.items()}
            return [done[b.digest] for b in blobs]
        # Largest first: the biggest blob is the critical path, so it starts before the small ones.
        order = sorted(unique.items(), key=lambda item: item[1].size, reverse=True)
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="kiln-push") as pool:
            futures: dict[Digest, Future[BlobResult]] = {
                d: pool.submit(self.push_source, repo, b) for d, b in order
            }
            finished, pending = wait(futures.values(), return_when=FIRST_EXCEPTION)
            for fut in pending:
                fut.cancel()
            for fut in finished:
                exc = fut.exception()
                if exc is not None:
                    raise exc
            return [futures[b.digest].result() for b in blobs]

    def pull_blob(
        self,
        repo: str,
        digest: Digest,
        dest: Path,
        *,
        size_cap: int = DEFAULT_BLOB_CAP,
        expected_size: int | None = None,
    ) -> int:
        """Download a blob to ``dest``, hashing as it streams; returns its size.

        The bytes go to a temporary file beside ``dest`` that replaces it only when the digest (and
        ``expected_size``, if given) match; anything else raises and leaves nothing behind.
        """
        dest = Path(dest)
        what = f"{repo}: pull blob {digest}"
        cap = size_cap if expected_size is None else min(size_cap, expected_size)
        fd, tmp_name = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
        tmp = Path(tmp_name)
        try:
            with os.fdopen(fd, "wb") as fh:
                state = Download(fh=fh, cap=cap, what=what)
                self._download(repo, digest, state)
                state.verify(digest, expected_size)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, dest)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
            raise
        fsync_dir(dest.parent)
        return state.received

    def _download(self, repo: str, digest: Digest, state: Download) -> None:
        scopes = self._scopes(repo, "pull")
        failures = 0
        while True:
            headers = {"Range": f"bytes={state.received}-"} if state.received else {}
            try:
                resp = self._get_following_redirects(
                    f"/v2/{repo}/blobs/{digest}", scopes, headers, what=state.what
                )
                if resp.status_code == 200:
                    state.restart()  # a first answer, or the server ignored Range
                self.session.expect(resp, (200, 206), what=state.what)
                if resp.status_code == 200:
                    check_header_digest(resp, digest, what=state.what)
                state.take(resp)
            except TransientFailure as exc:
                failures += 1
                if failures >= self.session.retry.attempts:
                    raise RegistryUnavailable(
                        f"{exc.message} (gave up after {failures} attempts)",
                        hint="the registry or the network is failing; try again later",
                    ) from exc
                self.session.backoff(failures - 1, exc.retry_after)
            else:
                return

    def _get_following_redirects(
        self, path: str, scopes: tuple[str, ...], headers: dict[str, str], *, what: str
    ) -> httpx.Response:
        url: str | httpx.URL = path
        for _ in range(_MAX_REDIRECTS + 1):
            resp = self.session.send("GET", url, scopes=scopes, headers=headers, what=what)
            if resp.status_code not in (301, 302, 303, 307, 308):
                return resp
            release(resp)
            base = url if isinstance(url, httpx.URL) else self.session.url(url)
            loc = resp.headers.get("location")
            if not loc:
                raise RegistryError(f"{what}: a redirect without a Location")
            url = join_url(base, loc, what=what)
        raise RegistryError(f"{what}: more than {_MAX_REDIRECTS} redirects")

    # --------------------------------------------------------------------------------- manifests

    @staticmethod
    def _ref(ref: str | Digest) -> str:
        if isinstance(ref, Digest):
            return str(ref)
        if ref.startswith("sha256:"):
            try:
                return str(Digest.parse(ref))
            except DocumentError as exc:
                raise PublishError(f"invalid digest reference {ref!r}", hint=exc.hint) from exc
        return validate_tag(ref)

    def push_manifest(self, repo: str, ref: str | Digest, data: bytes, media_type: str) -> Digest:
        """PUT the exact bytes under a tag or their digest; returns the digest the registry confirmed."""
        digest = Digest.of(data)
        what = f"{repo}: push manifest {ref}"
        if len(data) > MAX_DOCUMENT_BYTES:
            raise PublishError(f"{what}: {len(data)} bytes exceeds the {MAX_DOCUMENT_BYTES}-byte cap")
        target = self._ref(ref)
        if target.startswith("sha256:") and target != str(digest):
            raise VerificationError(
                f"{what}: the bytes hash to {digest}, not to the digest they are pushed under",
                reason=Reason.DIGEST,
            )
        resp = self.session.send(
            "PUT",
            f"/v2/{repo}/manifests/{target}",
            scopes=self._scopes(repo, "pull", "push"),
            headers={"Content-Type": media_type},
            body=data,
            what=what,
        )
        release(self.session.expect(resp, (201,), what=what))
        check_header_digest(resp, digest, what=what)
        if not target.startswith("sha256:"):
            self._tags[repo, target] = Descriptor(media_type=media_type, digest=digest, size=len(data))
        return digest

    def known_tag(self, repo: str, tag: str) -> Descriptor | None:
        """The manifest this client last pushed, fetched or found under ``tag`` in this process,
        without asking the registry (``None``: not seen). Another writer may have moved the tag
        since: a caller that must know the current target asks :meth:`head_manifest`."""
        return self._tags.get((repo, tag))

    def get_manifest(
        self,
        repo: str,
        ref: str | Digest,
        *,
        size_cap: int = MAX_DOCUMENT_BYTES,
        accept: str = MANIFEST_ACCEPT,
    ) -> Manifest:
        """GET a manifest or index with the OCI ``Accept`` types; verified when ``ref`` is a digest."""
        target = self._ref(ref)
        what = f"{repo}: get manifest {target}"
        resp = self.session.send(
            "GET",
            f"/v2/{repo}/manifests/{target}",
            scopes=self._scopes(repo, "pull"),
            headers={"Accept": accept},
            what=what,
        )
        self.session.expect(resp, (200,), what=what)
        media_type = content_type(resp)
        header = header_digest(resp, what=what)
        try:
            data = read_capped(resp, size_cap, what=what)
        except PublishError as exc:
            if isinstance(exc, TransientFailure):
                raise
            raise VerificationError(exc.message, reason=Reason.SIZE) from exc
        digest = Digest.of(data)
        if target.startswith("sha256:") and str(digest) != target:
            raise VerificationError(
                f"{what}: the registry sent bytes hashing to {digest}",
                reason=Reason.DIGEST,
                hint="the registry or something between it and kiln altered the manifest",
            )
        if header is not None and header != digest:
            raise VerificationError(
                f"{what}: the registry says {header} but the bytes hash to {digest}", reason=Reason.DIGEST
            )
        found = Manifest(data=data, media_type=media_type, digest=digest)
        if not target.startswith("sha256:"):
            self._tags[repo, target] = found.descriptor
        return found

    def head_manifest(self, repo: str, ref: str | Digest) -> Descriptor | None:
        """The manifest's descriptor (media type, digest, size), or ``None`` if it does not exist."""
        target = self._ref(ref)
        what = f"{repo}: HEAD manifest {target}"
        resp = self.session.send(
            "HEAD",
            f"/v2/{repo}/manifests/{target}",
            scopes=self._scopes(repo, "pull"),
            headers={"Accept": MANIFEST_ACCEPT},
            what=what,
        )
        if resp.status_code == 404:
            release(resp)
            return None
        self.session.expect(resp, (200,), what=what)  # reads an error's (empty) body before release
        release(resp)
        digest = header_digest(resp, what=what)
        length = header_int(resp, "content-length")
        if digest is None or length is None:
            return self.get_manifest(repo, target).descriptor
        if target.startswith("sha256:") and str(digest) != target:
            raise VerificationError(f"{what}: the registry answered for {digest}", reason=Reason.DIGEST)
        return Descriptor(media_type=content_type(resp), digest=digest, size=length)

    def delete_manifest(self, repo: str, digest: Digest) -> None:
        """Delete a manifest by digest (registries delete by digest only; tags go with it)."""
        if not isinstance(digest, Digest):
            raise PublishError("manifests are deleted by digest only", hint="resolve the tag first")
        what = f"{repo}: delete manifest {digest}"
        resp = self.session.send(
            "DELETE",
            f"/v2/{repo}/manifests/{digest}",
            scopes=self._scopes(repo, "delete"),
            what=what,
        )
        release(self.session.expect(resp, (202, 200), what=what))

    # -------------------------------------------------------------------------------------- tags

    def list_tags(self, repo: str, *, page_size: int | None = None) -> tuple[str, ...]:
        """Every tag of ``repo``, sorted here (registries need not sort), following ``Link`` pages."""
        url: str | httpx.URL = f"/v2/{repo}/tags/list"
        params = {"n": str(page_size)} if page_size else None
        tags: set[str] = set()
        what = f"{repo}: list tags"
        for _ in range(MAX_TAG_PAGES):
            resp = self.session.send("GET", url, scopes=self._scopes(repo, "pull"), params=params, what=what)
            self.session.expect(resp, (200,), what=what)
            link = resp.headers.get("link")
            body = read_capped(resp, MAX_TAG_LIST, what=what)
            try:
                doc = parse_json_object(body, what=what, limit=MAX_TAG_LIST)
            except DocumentError as exc:
                raise RegistryError(exc.message) from exc
            page = doc.get("tags")
            if page is not None and (not isinstance(page, list) or not all(isinstance(t, str) for t in page)):
                raise RegistryError(f"{what}: 'tags' must be a list of strings")
            tags.update(page or ())
            m = _LINK_NEXT.search(link or "")
            if m is None:
                return tuple(sorted(tags))
            base = url if isinstance(url, httpx.URL) else self.session.url(url)
            nxt = join_url(base, m.group(1), what=what)
            if nxt.netloc != base.netloc:
                raise RegistryError(f"{what}: the registry's Link points to another host")
            url, params = nxt, None
        raise RegistryError(f"{what}: more than {MAX_TAG_PAGES} pages")

    # --------------------------------------------------------------------------------- referrers

    def referrers_api(self, repo: str) -> bool | None:
        """Whether ``repo``'s registry answered the referrers API (``None``: not asked yet)."""
        return self._referrers_api.get(repo)

    def _referrers_via_api(self, repo: str, digest: Digest) -> OCIIndex | None:
        what = f"{repo}: referrers of {digest}"
        resp = self.session.send(
            "GET",
            f"/v2/{repo}/referrers/{digest}",
            scopes=self._scopes(repo, "pull"),
            headers={"Accept": MediaType.OCI_INDEX},
            what=what,
        )
        if resp.status_code == 404:
            read_capped(resp, MAX_ERROR_BODY, what=what)
            self._referrers_api[repo] = False
            return None
        self.session.expect(resp, (200,), what=what)
        body = read_capped(resp, MAX_DOCUMENT_BYTES, what=what)
        self._referrers_api[repo] = True
        try:
            return OCIIndex.from_bytes(body)
        except DocumentError as exc:
            raise RegistryError(f"{what}: {exc.message}") from exc

    def _fallback_index(self, repo: str, digest: Digest) -> OCIIndex | None:
        try:
            man = self.get_manifest(repo, digest.tag_form, accept=MediaType.OCI_INDEX)
        except RegistryError as exc:
            if exc.status == 404:
                return None
            raise
        try:
            return OCIIndex.from_bytes(man.data)
        except DocumentError as exc:
            raise RegistryError(
                f"{repo}: the referrers tag {digest.tag_form} is not an index: {exc.message}"
            ) from exc

    def referrers(self, repo: str, digest: Digest, *, artifact_type: str | None = None) -> OCIIndex:
        """The manifests whose ``subject`` is ``digest``: from the referrers API, or the fallback tag."""
        index = self._referrers_via_api(repo, digest)
        if index is None:
            index = self._fallback_index(repo, digest) or OCIIndex(manifests=())
        if artifact_type is not None:
            kept = tuple(d for d in index.manifests if d.artifact_type == artifact_type)
            index = dataclasses.replace(index, manifests=kept, raw=None)
        return index

    def _referrer_lock(self, repo: str, subject: Digest) -> threading.Lock:
        with self._locks_guard:
            return self._referrer_locks.setdefault((repo, subject), threading.Lock())

    def add_referrer(self, repo: str, subject: Digest, descriptor: Descriptor) -> bool:
        """Record ``descriptor`` (a pushed manifest whose subject is ``subject``) as a referrer;
        see :meth:`add_referrers`."""
        return self.add_referrers(repo, subject, (descriptor,))

    def add_referrers(self, repo: str, subject: Digest, descriptors: Sequence[Descriptor]) -> bool:
        """Record ``descriptors`` (pushed manifests whose subject is ``subject``) as referrers.

        A registry with the referrers API indexes them by itself (returns ``False``); otherwise the
        ``sha256-<hex>`` tag index is read, extended with those it lacks and written back once,
        under a lock, so concurrent callers in this process never lose each other's entries
        (returns ``True``).
        """
        api = self._referrers_api.get(repo)
        if api is None:
            api = self._referrers_via_api(repo, subject) is not None
        if api:
            return False
        with self._referrer_lock(repo, subject):
            current = self._fallback_index(repo, subject)
            if current is None:
                current = OCIIndex(manifests=(), media_type=MediaType.OCI_INDEX)
            listed = {d.digest for d in current.manifests}
            new = [d for d in {d.digest: d for d in descriptors}.values() if d.digest not in listed]
            if not new:
                return True
            updated = dataclasses.replace(
                current,
                manifests=(*current.manifests, *new),
                media_type=current.media_type or MediaType.OCI_INDEX,
                raw=None,
            )
            self.push_manifest(repo, subject.tag_form, updated.to_bytes(), MediaType.OCI_INDEX)
        return True

    # ------------------------------------------------------------------------------------ images

    def push_image(
        self,
        repo: str,
        blobs: Sequence[BlobSource],
        manifest: bytes,
        media_type: str,
        *,
        tags: Sequence[str] = (),
    ) -> Digest:
        """Push every blob (``jobs`` at once), then the manifest by digest and under each tag."""
        self.push_blobs(repo, blobs)
        digest = self.push_manifest(repo, Digest.of(manifest), manifest, media_type)
        for tag in tags:
            self.push_manifest(repo, tag, manifest, media_type)
        return digest
