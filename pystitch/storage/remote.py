"""Object storage: ``s3://`` URLs for the input image, the big stores and the outputs.

Where things may live
    The input image, the big stores (staging labels, lut, the output being
    written: ``--store-dir``), the output label image and its report may be
    ``s3://bucket/prefix`` URLs of AWS S3 or of any S3-compatible store
    (MinIO, Ceph, institutional stores).  The work directory stays a local
    or shared path: its small files (plan, manifests, pairs, statistics, the
    run lock) are written atomically by rename, which object stores do not
    have, and a workflow engine hands them between tasks.

How
    zarr's own fsspec store support (s3fs) opens every URL; nothing here
    speaks HTTP.  Credentials and the endpoint come from where botocore
    finds them — ``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``,
    ``AWS_PROFILE`` and ``~/.aws/config``/``credentials``, instance roles,
    ``AWS_ENDPOINT_URL_S3``/``AWS_ENDPOINT_URL`` for an S3-compatible store —
    and from the storage options of this process (:func:`storage_options`):
    the JSON object in ``PYSTITCH_STORAGE_OPTIONS`` updated by
    ``--storage-options`` (s3fs's keyword arguments, e.g.
    ``{"endpoint_url": "https://minio.example.org", "anon": true}``).

Publishing without a rename
    :func:`copy_tree` writes a marker object first, then every chunk, then the
    metadata documents of the arrays, and the root's documents LAST: a
    reader opening the URL sees nothing until the whole image is there.  A
    publication that fails is removed again; one killed outright leaves
    objects without root documents but with the marker, which the next run
    recognises as its own leftovers and replaces.
"""

from __future__ import annotations

import json
import os
import posixpath
import re
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Sequence

from ..errors import InputError, InputNotFoundError

#: URL schemes pystitch reads and writes (``memory://`` names arrays held in memory: :mod:`.memory`)
SCHEMES = ("s3",)
#: the JSON object of storage options every URL is opened with (updated by ``--storage-options``)
ENV = "PYSTITCH_STORAGE_OPTIONS"
#: written first into a prefix being published, removed last: leftovers of an interrupted publication
PUBLISHING_MARKER = ".pystitch-publishing.json"
#: zarr's metadata documents (v2 and v3)
METADATA_NAMES = (".zattrs", ".zarray", ".zgroup", "zarr.json")

_URL = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")
#: options set in this process (``--storage-options``, ``pystitch.run(storage_options=...)``, a worker's parent's)
_OVERRIDE: dict[str, Any] = {}


# --------------------------------------------------------------------------- URLs


def scheme(uri: Any) -> str | None:
    """The scheme of a URL (``"s3"``), None for a local path."""
    match = _URL.match(os.fspath(uri)) if isinstance(uri, (str, os.PathLike)) else None
    return match.group(1).lower() if match else None


def is_url(uri: Any) -> bool:
    return scheme(uri) is not None


def is_remote(uri: Any) -> bool:
    """An object-store URL pystitch reads and writes (``s3://``)."""
    return scheme(uri) in SCHEMES


def check_scheme(uri: str, what: str) -> None:
    """A URL of a scheme pystitch does not support is one clear error."""
    found = scheme(uri)
    if found is not None and found not in SCHEMES and found != "memory":
        raise InputError(f"Expected a local path or an s3:// URL for the {what}. Got {uri} instead (URLs of "
                         f"scheme {found}:// are not supported).")


def normalise(uri: str) -> str:
    """``s3://bucket//a/b/`` -> ``s3://bucket/a/b``; ``file:///x`` -> ``/x``."""
    found = scheme(uri)
    if found == "file":
        return uri[len("file://"):]
    if found is None:
        return uri
    rest = uri[len(found) + 3:]
    bucket, _, key = rest.partition("/")
    key = posixpath.normpath("/" + key).lstrip("/") if key.strip("/") else ""
    return f"{found}://{bucket}" + (f"/{key}" if key else "")


def split(uri: str) -> tuple[str, str, str]:
    """``(scheme, bucket, key)`` of a URL."""
    found = scheme(uri) or ""
    bucket, _, key = uri[len(found) + 3:].partition("/")
    return found, bucket, key.strip("/")


def join(base: str, *parts: str) -> str:
    """A path or URL below ``base``."""
    if not is_url(base):
        return str(Path(base).joinpath(*parts))
    return "/".join([base.rstrip("/"), *(p.strip("/") for p in parts)])


def parent(uri: str) -> str:
    if not is_url(uri):
        return str(Path(uri).parent)
    found, bucket, key = split(uri)
    head = posixpath.dirname(key)
    return f"{found}://{bucket}" + (f"/{head}" if head else "")


def name(uri: str) -> str:
    return Path(uri).name if not is_url(uri) else posixpath.basename(split(uri)[2])


def contains(outer: str, inner: str) -> bool:
    """Whether URL ``inner`` is URL ``outer`` or lies below it (same bucket, key prefix on a ``/``)."""
    a, b = split(normalise(outer)), split(normalise(inner))
    if a[:2] != b[:2]:
        return False
    return a[2] == "" or b[2] == a[2] or b[2].startswith(a[2] + "/")


# --------------------------------------------------------------------------- options


def parse_options(value: Any) -> dict[str, Any]:
    """Storage options from a JSON object (text) or a dict; None is none."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return {}
    if isinstance(value, dict):
        return dict(value)
    try:
        parsed = json.loads(value)
    except (TypeError, json.JSONDecodeError):
        parsed = None
    if not isinstance(parsed, dict):
        raise InputError(f"Expected --storage-options as a JSON object, e.g. '{{\"endpoint_url\": "
                         f"\"https://s3.example.org\"}}'. Got {value!r} instead.")
    return parsed


def storage_options() -> dict[str, Any]:
    """The options every URL of this process is opened with: ``PYSTITCH_STORAGE_OPTIONS``
    updated by what this process was given."""
    try:
        base = parse_options(os.environ.get(ENV))
    except InputError:
        raise InputError(f"Expected {ENV} to hold a JSON object. Got {os.environ.get(ENV)!r} instead.") from None
    return {**base, **_OVERRIDE}


def set_storage_options(options: Any) -> dict[str, Any]:
    """Use ``options`` (JSON text or a dict, over ``PYSTITCH_STORAGE_OPTIONS``)
    for every URL this process opens from now on; returns the previous ones."""
    global _OVERRIDE
    previous, _OVERRIDE = _OVERRIDE, parse_options(options)
    return previous


@contextmanager
def using(options: Any) -> Iterator[None]:
    """``set_storage_options`` for the time of a ``with`` block (None: unchanged)."""
    if options is None:
        yield
        return
    previous = set_storage_options(options)
    try:
        yield
    finally:
        set_storage_options(previous)


def zarr_kwargs(uri: Any) -> dict[str, Any]:
    """What ``zarr.open*``/``zarr.create*`` need besides the store URL."""
    return {"storage_options": storage_options()} if is_remote(uri) else {}


def filesystem(uri: str, **extra: Any) -> tuple[Any, str]:
    """``(fsspec filesystem, path)`` of a URL, with this process's options;
    listings are never cached (other processes write the same prefixes)."""
    import fsspec

    options = {**storage_options(), **extra}
    options.setdefault("use_listings_cache", False)
    fs, path = fsspec.core.url_to_fs(uri, **options)
    return fs, path


# --------------------------------------------------------------------------- checks before any work


def endpoint(options: dict | None = None) -> str:
    """Where requests go, for messages."""
    options = storage_options() if options is None else options
    url = options.get("endpoint_url") or (options.get("client_kwargs") or {}).get("endpoint_url")
    return str(url or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or "AWS S3")


def check_access(uri: str, what: str, *, must_exist: bool = False) -> None:
    """One clear line, before any work, for a URL that cannot be used: an
    unsupported scheme, missing credentials, an unreachable endpoint, a
    bucket that does not exist or is not ours to read (``must_exist``:
    nothing at the URL)."""
    check_scheme(uri, what)
    if not is_remote(uri):
        return
    _, bucket, key = split(uri)
    if not bucket:
        raise InputError(f"Expected s3://bucket/prefix for the {what}. Got {uri} instead.")
    options = storage_options()
    where = endpoint(options)
    # a short timeout and one retry: a wrong endpoint is reported in seconds, not minutes
    config = {"connect_timeout": 10, "read_timeout": 30, "retries": {"max_attempts": 2, "mode": "standard"},
              **(options.get("config_kwargs") or {})}
    try:
        fs, _ = filesystem(uri, skip_instance_cache=True, config_kwargs=config)
        fs.call_s3("head_bucket", Bucket=bucket)
        if must_exist and not (fs.exists(f"{bucket}/{key}") if key else True):
            raise InputNotFoundError(f"Nothing found at {uri} (the {what}) on {where}. Expected an existing "
                                     "zarr or OME-Zarr store there.")
    except InputError:
        raise
    except Exception as exc:  # botocore, aiohttp and s3fs raise many unrelated types
        raise InputError(_describe(exc, uri, what, bucket, where)) from exc


def _describe(exc: BaseException, uri: str, what: str, bucket: str, where: str) -> str:
    kind = type(exc).__name__
    detail = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else kind
    if kind in ("NoCredentialsError", "PartialCredentialsError", "CredentialRetrievalError"):
        return (f"No credentials to reach {uri} (the {what}) on {where}: {detail}. Expected AWS_ACCESS_KEY_ID and "
                "AWS_SECRET_ACCESS_KEY, a profile (AWS_PROFILE, ~/.aws/credentials) or an instance role; "
                "--storage-options '{\"anon\": true}' for a public bucket.")
    if kind in ("EndpointConnectionError", "ConnectTimeoutError", "ConnectionClosedError", "ClientConnectorError",
                "ServerTimeoutError", "ReadTimeoutError") or isinstance(exc, (ConnectionError, TimeoutError)):
        return (f"Cannot reach the object store {where} for {uri} (the {what}): {detail}. Expected a reachable S3 "
                "endpoint: check AWS_ENDPOINT_URL, --storage-options endpoint_url and the network.")
    if isinstance(exc, FileNotFoundError):
        return (f"The bucket {bucket} of {uri} (the {what}) does not exist on {where}. Expected an existing "
                "bucket: pystitch never creates buckets.")
    if isinstance(exc, PermissionError):
        return (f"Access to the bucket {bucket} of {uri} (the {what}) is denied on {where} ({detail}). Expected "
                "credentials allowed to list and read it (and write, for outputs).")
    return f"Could not use {uri} (the {what}) on {where}: {kind}: {detail}."


# --------------------------------------------------------------------------- trees of objects


def exists(uri: str) -> bool:
    """Whether any object is at ``uri`` or below it."""
    fs, path = filesystem(uri)
    return bool(fs.exists(path))


def remove(uri: str) -> None:
    """Remove every object at and below ``uri`` (nothing there: nothing to do)."""
    fs, path = filesystem(uri)
    found = fs.find(path, withdirs=False)
    if fs.isfile(path):
        found.append(path)
    if found:
        fs.rm(sorted(set(found)))


def read_bytes(uri: str) -> bytes | None:
    """The object at ``uri``; None when there is none."""
    fs, path = filesystem(uri)
    try:
        return fs.cat_file(path)
    except FileNotFoundError:
        return None


def write_bytes(uri: str, data: bytes) -> None:
    fs, path = filesystem(uri)
    fs.pipe_file(path, data)


def list_below(root: str) -> list[str]:
    """Relative names (``/``-separated) of every file below a local directory or URL."""
    return _list(root)


def _list(root: str) -> list[str]:
    """Relative names (``/``-separated) of every file below a local directory or URL."""
    if is_remote(root):
        fs, path = filesystem(root)
        prefix = path.rstrip("/") + "/"
        return sorted(p[len(prefix):] for p in fs.find(path, withdirs=False) if p.startswith(prefix))
    base = Path(root)
    return sorted(p.relative_to(base).as_posix() for p in base.rglob("*") if p.is_file())


def publication_order(names: Sequence[str], last: Sequence[str] = ()) -> list[list[str]]:
    """Batches to copy one after the other: data, then the metadata of every
    node below the root (deepest first), then the root's documents and the
    names in ``last``, one by one, the root's ``zarr.json``/``.zgroup`` LAST
    (what makes a reader see the store).

    >>> publication_order(["0/c/0", ".zattrs", "0/.zarray", ".zgroup", "x.csv"], last=["x.csv"])
    [['0/c/0'], ['0/.zarray'], ['x.csv'], ['.zattrs'], ['.zgroup']]
    """
    root_order = {n: i for i, n in enumerate(METADATA_NAMES)}
    data = [n for n in names if posixpath.basename(n) not in METADATA_NAMES and n not in last]
    meta = sorted((n for n in names if posixpath.basename(n) in METADATA_NAMES and "/" in n),
                  key=lambda n: (-n.count("/"), n))
    final = [n for n in last if n in names] + sorted((n for n in names if n in root_order), key=root_order.get)
    return [batch for batch in (data, meta) if batch] + [[n] for n in final]


def copy_tree(src: str, dst: str, *, last: Sequence[str] = (), marker: dict | None = None) -> None:
    """Copy every file of ``src`` (a local directory or a URL) to the URL
    ``dst``, which must hold nothing: the marker object first, then the
    files in :func:`publication_order`, then the marker is removed.  Within
    one store the copy is made by the server; nothing goes through this
    machine.  On failure what was copied is removed again."""
    names = _list(src)
    fs, dst_path = filesystem(dst)
    flag = f"{dst_path.rstrip('/')}/{PUBLISHING_MARKER}"
    try:
        fs.pipe_file(flag, json.dumps({"source": src, **(marker or {})}).encode())
        for batch in publication_order(names, last):
            targets = [f"{dst_path.rstrip('/')}/{n}" for n in batch]
            if is_remote(src):
                src_fs, src_path = filesystem(src)
                sources = [f"{src_path.rstrip('/')}/{n}" for n in batch]
                if type(src_fs) is type(fs):
                    fs.copy(sources, targets)
                else:  # pragma: no cover - one scheme today
                    for a, b in zip(sources, targets):
                        fs.pipe_file(b, src_fs.cat_file(a))
            else:
                fs.put([str(Path(src) / n) for n in batch], targets)
        fs.rm_file(flag)
    except BaseException:
        try:
            remove(dst)
        finally:
            raise


def download_tree(src: str, dst: str | os.PathLike) -> None:
    """Copy every object below URL ``src`` into the local directory ``dst`` (created)."""
    fs, path = filesystem(src)
    names = _list(src)
    Path(dst).mkdir(parents=True, exist_ok=True)
    if names:
        for n in names:
            (Path(dst) / n).parent.mkdir(parents=True, exist_ok=True)
        fs.get([f"{path.rstrip('/')}/{n}" for n in names], [str(Path(dst) / n) for n in names])


def publishing_marker(uri: str) -> dict | None:
    """The marker of an interrupted publication into ``uri`` (None: there is none)."""
    data = read_bytes(join(uri, PUBLISHING_MARKER))
    if data is None:
        return None
    try:
        found = json.loads(data)
    except ValueError:
        return {}
    return found if isinstance(found, dict) else {}


def check(argv: Sequence[str]) -> int:
    """``check [--storage-options JSON] [--exists WHAT URL]... [--bucket WHAT URL]... [--absent WHAT URL]...``:
    each URL usable before any work (:func:`check_access`; ``--exists``: something
    must be there, e.g. an input image); local paths are passed over. The first
    problem is one line on stderr (exit 1); then each ``--absent`` URL that already
    holds something is printed on stdout (an output that must not be replaced)."""
    import sys

    # by hand: WHAT is often a flag itself (--outdir), which argparse would take for an option
    options, found, rest = None, {"--exists": [], "--bucket": [], "--absent": []}, list(argv)
    while rest:
        if rest[0] == "--storage-options" and len(rest) >= 2:
            options, rest = rest[1], rest[2:]
        elif rest[0] in found and len(rest) >= 3:
            found[rest[0]].append((rest[1], rest[2]))
            rest = rest[3:]
        else:
            print("usage: python -m pystitch.storage.remote check [--storage-options JSON] "
                  f"[--exists|--bucket|--absent WHAT URL]... (not understood: {' '.join(rest)})", file=sys.stderr)
            return 2
    try:
        with using(options):
            for what, uri in found["--exists"]:
                check_access(uri, what, must_exist=True)
            for what, uri in [*found["--bucket"], *found["--absent"]]:
                check_access(uri, what)
            for _what, uri in found["--absent"]:
                if is_remote(uri) and exists(uri):
                    print(uri)
    except InputError as exc:
        print(str(exc).splitlines()[0] if str(exc) else type(exc).__name__, file=sys.stderr)
        return 1
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m pystitch.storage.remote cat URL``: the object at URL on stdout
    (a workflow task keeps a copy of what a step published to an object store);
    ``python -m pystitch.storage.remote check ...``: :func:`check` (a workflow checks
    its URLs before it submits any task)."""
    import sys

    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["check"]:
        return check(args[1:])
    if len(args) != 2 or args[0] != "cat":
        print("usage: python -m pystitch.storage.remote cat URL | check [--storage-options JSON] "
              "[--exists|--bucket|--absent WHAT URL]...", file=sys.stderr)
        return 2
    data = read_bytes(args[1])
    if data is None:
        print(f"Nothing found at {args[1]}.", file=sys.stderr)
        return 1
    sys.stdout.buffer.write(data)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
