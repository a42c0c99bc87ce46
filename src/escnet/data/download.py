"""Downloads with a progress bar, resume of a partial file, and verification.

ESC-50 is distributed as the archive of the GitHub repository karolpiczak/ESC-50 (about 600 MB,
CC BY-NC 3.0). GitHub builds that archive on request, so its bytes (and checksum) are not fixed:
unless ``--sha256`` is given, the archive is checked by its length and the CRC of every member,
and the extracted dataset by its content (``meta/esc50.csv`` columns, one audio file per row, the
expected number of clips).
"""

from __future__ import annotations

import hashlib
import shutil
import urllib.error
import urllib.request
import zipfile
from pathlib import Path, PurePosixPath
from urllib.parse import urlsplit

from tqdm.auto import tqdm

from escnet.data.tables import read_esc50
from escnet.errors import DataError, EscnetError
from escnet.files import make_output_dir

ESC50_URL = "https://github.com/karolpiczak/ESC-50/archive/master.zip"
ESC50_CLIPS = 2000
_CHUNK = 1 << 20


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(_CHUNK), b""):
            h.update(block)
    return h.hexdigest()


def url_problem(url: str) -> str | None:
    """Why escnet cannot fetch ``url`` (``None``: it can): an ``http://`` or ``https://`` URL
    with a host, or a ``file://`` one (a local mirror)."""
    try:
        parts = urlsplit(url)
        host = parts.hostname
    except ValueError as err:  # a bracket left open: "Invalid IPv6 URL"
        return str(err)
    if parts.scheme in ("http", "https"):
        return None if host else "no host"
    if parts.scheme == "file":
        return None if parts.path else "no path"
    return "not http://, https:// or file://"


def download(url: str, dest: Path, sha256: str | None = None, progress: bool = True) -> Path:
    """Fetch ``url`` to ``dest``, resuming ``dest.part`` if an earlier attempt left one.

    ``sha256`` is the expected digest, or a prefix of it (torchvision names its files with one).

    Raises:
        EscnetError: ``url`` is none escnet can fetch (:func:`url_problem`), the server cannot
            be reached, the transfer ended early (the partial file is kept for the next
            attempt), or the checksum does not match (the file is deleted).
    """
    if (why := url_problem(url)) is not None:
        raise EscnetError(f"{url}: not a URL escnet can fetch ({why})")
    if dest.exists() and (sha256 is None or sha256_of(dest).startswith(sha256.lower())):
        return dest
    make_output_dir(dest.parent)
    part = dest.with_name(dest.name + ".part")
    have = part.stat().st_size if part.exists() else 0
    headers = {"User-Agent": "escnet", **({"Range": f"bytes={have}-"} if have else {})}
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=60) as resp:
            if resp.status != 206:  # the server ignored the range: start over
                have = 0
            length = resp.headers.get("Content-Length")
            total = have + int(length) if length is not None else None
            with part.open("ab" if have else "wb") as out, tqdm(
                total=total, initial=have, unit="B", unit_scale=True, unit_divisor=1024,
                desc=f"downloading {dest.name}", disable=not progress,
            ) as bar:
                for block in iter(lambda: resp.read(_CHUNK), b""):
                    out.write(block)
                    bar.update(len(block))
    except urllib.error.HTTPError as err:
        err.close()  # it holds the answer's connection
        if err.code != 416:  # 416: nothing left to send, the partial file is complete
            raise EscnetError(f"{url}: server answered {err.code} {err.reason}") from None
        total = have
    except (PermissionError, IsADirectoryError, NotADirectoryError) as err:
        raise EscnetError(f"{part}: cannot write it ({err.strerror}); choose a folder you can "
                          "write to") from None
    except (urllib.error.URLError, OSError) as err:
        reason = getattr(err, "reason", err)
        kept = part.stat().st_size if part.exists() else 0
        raise EscnetError(f"{url}: download failed ({reason}); {kept} bytes kept in {part}, "
                          "run the same command again to resume") from None
    size = part.stat().st_size
    if total is not None and size != total:
        raise EscnetError(f"{url}: transfer ended at {size} of {total} bytes; run the same "
                          "command again to resume")
    if sha256 is not None and not (digest := sha256_of(part)).startswith(sha256.lower()):
        part.unlink()
        raise EscnetError(f"{url}: checksum mismatch (got sha256 {digest[:16]}…, expected "
                          f"{sha256[:16]}…); the file was deleted, run again to re-download")
    part.replace(dest)
    return dest


def extract_dataset(archive: Path, target: Path, keep: tuple[str, ...] = ("audio", "meta")) -> None:
    """Extract the ``keep`` folders of a repository archive (one top-level folder) into ``target``."""
    try:
        with zipfile.ZipFile(archive) as zf:
            broken = zf.testzip()
            if broken is not None:
                raise DataError(f"{archive}: member {broken} fails its CRC check; delete the "
                                "archive and download again")
            staging = target.with_name(target.name + ".extracting")
            shutil.rmtree(staging, ignore_errors=True)
            for info in zf.infolist():
                parts = PurePosixPath(info.filename).parts
                if len(parts) < 3 or parts[1] not in keep or info.is_dir() or ".." in parts:
                    continue  # skips the repository's other files, and unsafe paths
                out = staging.joinpath(*parts[1:])
                make_output_dir(out.parent)
                with zf.open(info) as src, out.open("wb") as dst:
                    shutil.copyfileobj(src, dst, _CHUNK)
    except zipfile.BadZipFile:
        archive.unlink()
        raise DataError(f"{archive}: not a valid zip archive; deleted it, download again") from None
    except OSError as err:  # a read-only or full target
        raise DataError(f"{target.parent}: cannot extract the archive there ({err.strerror})") from None
    if not staging.exists():
        raise DataError(f"{archive}: holds no {' or '.join(keep)} folder")
    shutil.rmtree(target, ignore_errors=True)
    staging.replace(target)


def download_esc50(root: str | Path, url: str = ESC50_URL, sha256: str | None = None,
                   expected_clips: int = ESC50_CLIPS, progress: bool = True) -> Path:
    """Download, verify and extract ESC-50 into ``root/esc50``; return that folder.

    A complete earlier download is reused; an interrupted one resumes. A URL escnet cannot
    fetch (:func:`url_problem`) is refused before ``root`` is made.
    """
    if (why := url_problem(url)) is not None:
        raise EscnetError(f"{url}: not a URL escnet can fetch ({why})")
    root = Path(root)
    make_output_dir(root)
    target = root / "esc50"
    if not (target / "meta" / "esc50.csv").is_file():
        archive = download(url, root / "ESC-50-master.zip", sha256, progress)
        extract_dataset(archive, target)
        archive.unlink()  # the extracted folder is all that is needed from here on
    table = read_esc50(target)  # every CSV row must have its audio file
    if len(table) != expected_clips:
        raise DataError(f"{target}: holds {len(table)} clips, expected {expected_clips}; delete "
                        f"{target} and run again")
    return target
