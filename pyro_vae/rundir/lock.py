"""Ownership of output directories: a manifest of what the tool wrote, and one writer at a time.

A directory the tool writes into (a run, a ``compare`` output, a ``diagnose --out`` folder) holds

- ``.pyro-vae-manifest.json``: every file the tool wrote there, as paths relative to the directory
  (so the directory can be moved), the folders it created, and nested run directories (the jobs of a
  comparison). A file is recorded *before* it is written, so a process killed mid-write still leaves
  its file in the manifest. ``--force`` deletes exactly these files, and nothing else: a user's own
  files in the directory survive, and a directory without a manifest is never treated as a run.
- ``.pyro-vae.lock``: an advisory ``flock``. A writer (``train``, ``compare``) holds it exclusively for
  its whole life; readers (``evaluate``, ``sample``, ``diagnose``, ``gradients``) hold it shared. The OS
  drops the lock when the process ends, however it ends, so a SIGKILL never leaves a stale lock.

Every write into such a directory goes through :meth:`RunDir.path` (or :meth:`RunDir.write_text`),
which records the file first and refuses to replace a file the tool did not write.
"""

from __future__ import annotations

import contextlib
import contextvars
import errno
import fcntl
import functools
import json
import os
import stat
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from ..errors import RunError, SpecError, brief
from ..spec import check_run_name  # re-exported: a run's name is checked where the spec is

MANIFEST = ".pyro-vae-manifest.json"
LOCK = ".pyro-vae.lock"
_FORMAT = "pyro-vae-manifest"
#: Room kept below PATH_MAX for the files the tool writes inside an output directory.
_INNER_ROOM = 64

F = TypeVar("F", bound=Callable[..., Any])
_HELD: contextvars.ContextVar[list[RunDir] | None] = contextvars.ContextVar("pyro_vae_held_locks", default=None)


# --------------------------------------------------------------------------- validating paths


def check_out_dir(path: str | os.PathLike[str], flag: str = "--out", what: str = "run directory") -> Path:
    """Refuse, before any work, an output directory that cannot be one: '', a file, a device, a path
    under a file, a name too long for the file system, or a place where nothing can be created."""
    text = os.fspath(path)
    if text == "" or not text.strip():
        raise SpecError(f"{flag} {text!r}: give a directory path, e.g. {flag} runs/demo")
    if "\0" in text:
        raise SpecError(f"{flag}: the path holds a NUL character")
    p = Path(text).expanduser()
    shown = repr(text if len(text) <= 80 else text[:77] + "...")
    try:
        name_max = os.pathconf(_existing_ancestor(p), "PC_NAME_MAX")
        path_max = os.pathconf(_existing_ancestor(p), "PC_PATH_MAX")
    except (OSError, ValueError):
        name_max, path_max = 255, 4096
    for part in p.parts:
        if len(os.fsencode(part)) > name_max:
            raise SpecError(f"{flag} {shown}: a path component is {len(os.fsencode(part))} bytes; at most {name_max}")
    if len(os.fsencode(str(p.absolute()))) > path_max - _INNER_ROOM:
        raise SpecError(f"{flag} {shown}: the path is too long (at most {path_max - _INNER_ROOM} bytes)")
    for a in [p, *p.parents]:
        try:
            st = a.stat()
        except FileNotFoundError:
            continue
        except NotADirectoryError:
            continue  # an ancestor is a file: reported when the loop reaches it
        except OSError as e:
            raise RunError(f"{flag} {shown}: {str(a)!r} cannot be read: {e.strerror or e}") from None
        if not stat.S_ISDIR(st.st_mode):
            kind = _kind(st.st_mode)
            if a == p:
                raise RunError(f"{flag} {shown} is {kind}, not a directory; give a directory path")
            raise RunError(f"cannot create {what} {shown}: {str(a)!r} is {kind}, not a directory")
        if a != p and not os.access(a, os.W_OK | os.X_OK):
            raise RunError(f"cannot create {what} {shown}: {str(a)!r} is not writable")
        try:
            fs = os.statvfs(a)
        except OSError:
            break
        if fs.f_flag & os.ST_RDONLY:
            raise RunError(f"cannot create {what} {shown}: {str(a)!r} is on a read-only file system")
        if fs.f_blocks == 0 and a != p:  # proc, sysfs and the like hold no files of ours (root bypasses access())
            raise RunError(f"cannot create {what} {shown}: {str(a)!r} is on a file system that stores no files")
        break
    return p


def check_out_file(
    path: str | os.PathLike[str],
    flag: str = "--out",
    *,
    own: Callable[[Path], bool] | None = None,
    run_dir: str | os.PathLike[str] | None = None,
) -> Path:
    """An output file: its folder must be (or become) a directory, and the path must not be one.

    With ``own``, an existing file outside ``run_dir`` (where the run's manifest decides instead) is
    accepted only when ``own`` recognises it as the command's earlier output: the only file it replaces.
    """
    text = os.fspath(path)
    if text == "" or not text.strip():
        raise SpecError(f"{flag} {text!r}: give a file path")
    p = Path(text).expanduser()
    if p.is_dir():
        raise SpecError(f"{flag} {text!r} is a directory; give a file path")
    if p.exists() and not p.is_file():
        raise SpecError(f"{flag} {text!r} is {_kind(p.stat().st_mode)}, not a regular file")
    check_out_dir(p.parent if str(p.parent) else ".", flag, "the folder of")
    if len(os.fsencode(p.name)) > 255 - _INNER_ROOM // 2:
        raise SpecError(f"{flag} {text[:80]!r}...: the file name is too long")
    outside = run_dir is None or not is_inside(p, Path(run_dir))
    if (
        own is not None
        and outside
        and (p.exists() or p.is_symlink())
        and not (p.is_file() and not p.is_symlink() and own(p))
    ):
        raise SpecError(
            f"{flag} {brief(text)} exists and is not an earlier output of this pyro-vae command; it is never "
            "overwritten: move it away or choose another path"
        )
    return p


def _existing_ancestor(p: Path) -> Path:
    for a in [p, *p.parents]:
        if a.exists():
            return a if a.is_dir() else a.parent
    return Path(".")


def _kind(mode: int) -> str:
    if stat.S_ISREG(mode):
        return "a file"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "not a directory"


def is_inside(path: Path, root: Path) -> bool:
    """Whether ``path`` lies in ``root`` (after resolving symlinks and '..')."""
    try:
        Path(os.path.realpath(path)).relative_to(os.path.realpath(root))
    except ValueError:
        return False
    return True


# --------------------------------------------------------------------------- the lock


def _holders(fd: int) -> list[int]:
    """PIDs holding a flock on the file behind ``fd`` (Linux ``/proc/locks``), excluding waiters."""
    st = os.fstat(fd)
    ident = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    pids = []
    try:
        lines = Path("/proc/locks").read_text().splitlines()
    except OSError:
        return []
    for line in lines:
        f = line.split()
        if "->" in f or len(f) < 6 or f[1] != "FLOCK":
            continue
        if f[5] == ident and f[4].isdigit() and int(f[4]) != os.getpid():
            pids.append(int(f[4]))
    return sorted(set(pids))


def _who(fd: int, root: Path) -> str:
    """'PID 123 (pyro-vae train)' from the lock file, or the PIDs the kernel reports."""
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        text = os.read(fd, 200).decode(errors="replace").strip()
    except OSError:
        text = ""
    recorded = text.split(" ", 1)
    holders = _holders(fd)
    if recorded[0].isdigit() and (not holders or int(recorded[0]) in holders):
        what = f" ({recorded[1]})" if len(recorded) > 1 else ""
        return f"PID {recorded[0]}{what}"
    if holders:
        return "PID " + ", ".join(map(str, holders))
    return "another process"


# --------------------------------------------------------------------------- the run directory


class RunDir:
    """One output directory owned by the tool: its manifest, its lock, and every write into it."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        self._fd: int | None = None
        self._exclusive = False

    # -- state ---------------------------------------------------------------
    @property
    def manifest_path(self) -> Path:
        return self.root / MANIFEST

    def is_run(self) -> bool:
        """The directory carries a manifest: the tool made it."""
        return self.manifest_path.is_file()

    def foreign_entries(self) -> list[str]:
        """Names in the directory when it has no manifest (the lock file aside)."""
        try:
            return sorted(p.name for p in self.root.iterdir() if p.name != LOCK)
        except FileNotFoundError:
            return []
        except OSError as e:
            raise RunError(f"cannot read {str(self.root)!r}: {e.strerror or e}") from None

    def read_manifest(self) -> dict[str, list[str]]:
        try:
            raw = json.loads(self.manifest_path.read_text())
        except FileNotFoundError:
            return {"files": earlier_run_files(self.root), "dirs": [], "runs": []}
        except (OSError, ValueError) as e:
            raise RunError(f"{str(self.manifest_path)!r} is unreadable ({type(e).__name__}); it lists the files pyro-vae "
                           "wrote here: restore it or remove the directory by hand") from None  # fmt: skip
        if not isinstance(raw, dict) or raw.get("format") != _FORMAT:
            raise RunError(f"{str(self.manifest_path)!r} is not a pyro-vae manifest")
        out: dict[str, list[str]] = {}
        for key in ("files", "dirs", "runs"):
            vals = raw.get(key, [])
            if not isinstance(vals, list) or not all(isinstance(v, str) and _safe_rel(v) for v in vals):
                raise RunError(f"{str(self.manifest_path)!r}: entry {key!r} is not a list of relative paths")
            out[key] = list(vals)
        return out

    def files(self) -> list[str]:
        """Relative paths of the files the tool wrote here."""
        return self.read_manifest()["files"]

    def _write_manifest(self, m: dict[str, list[str]]) -> None:
        from .checkpoint import atomic_write_text

        doc = {"format": _FORMAT, "version": 1, **{k: sorted(set(v)) for k, v in m.items()}}
        atomic_write_text(self.manifest_path, json.dumps(doc, indent=1) + "\n")

    @contextmanager
    def _editing(self) -> Iterator[dict[str, list[str]]]:
        """Read-modify-write of the manifest under a short exclusive lock on the directory itself
        (readers holding the run lock shared may record files at the same moment)."""
        try:
            dfd = os.open(self.root, os.O_RDONLY)
        except OSError as e:
            raise RunError(f"cannot open {str(self.root)!r}: {e.strerror or e}") from None
        try:
            fcntl.flock(dfd, fcntl.LOCK_EX)
            m = self.read_manifest()
            before = {k: sorted(set(v)) for k, v in m.items()}
            yield m
            if {k: sorted(set(v)) for k, v in m.items()} != before or not self.is_run():
                self._write_manifest(m)
        finally:
            os.close(dfd)  # releases the flock

    # -- locking ---------------------------------------------------------------
    def lock(self, *, exclusive: bool, command: str) -> RunDir:
        """Take the run lock without waiting; a conflict is a :class:`RunError` naming the holder."""
        if self._fd is not None:
            return self
        try:
            fd = os.open(self.root / LOCK, os.O_RDWR | os.O_CREAT, 0o666 & ~_umask())
        except OSError as e:
            if exclusive:
                raise RunError(f"cannot lock {str(self.root)!r}: {e.strerror or e}") from None
            return self  # a read-only run directory (e.g. on a read-only mount): nothing can write it either
        try:
            fcntl.flock(fd, (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | fcntl.LOCK_NB)
        except OSError as e:
            if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                os.close(fd)
                raise RunError(f"cannot lock {str(self.root)!r}: {e.strerror or e}") from None
            who = _who(fd, self.root)
            os.close(fd)
            if exclusive:
                raise RunError(
                    f"{str(self.root)!r} is in use by {who}; one process writes a run directory at a time: "
                    "wait for it to finish or choose another --out"
                ) from None
            raise RunError(
                f"{str(self.root)!r} is being written by {who}; its run is in progress: wait for it to finish "
                "(or stop it; its last checkpoint is kept) and try again"
            ) from None
        if exclusive:
            try:
                os.ftruncate(fd, 0)
                os.pwrite(fd, f"{os.getpid()} pyro-vae {command}\n".encode(), 0)
            except OSError:
                pass
        self._fd, self._exclusive = fd, exclusive
        held = _HELD.get()
        if held is not None:
            held.append(self)
        return self

    def release(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)

    def __del__(self) -> None:
        with contextlib.suppress(Exception):  # at interpreter shutdown the OS releases the lock anyway
            self.release()

    def __enter__(self) -> RunDir:  # noqa: PYI034 - RunDir is final
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    # -- writing -------------------------------------------------------------
    def path(self, rel: str | os.PathLike[str]) -> Path:
        """Record ``rel`` (relative to the directory, or an absolute path inside it) in the manifest,
        create its folders, and return its path; then write it with any writer.

        Refuses to hand out a path where a file the tool did not write already lies.
        """
        target = Path(rel)
        if not _safe_rel(target.as_posix()):
            raise RunError(f"{str(target)!r} is not a path inside {str(self.root)!r}")
        key = target.as_posix()
        full = self.root / target
        with self._editing() as m:
            if key not in m["files"] and (full.exists() or full.is_symlink()):
                raise RunError(
                    f"{str(full)!r} exists and was not written by pyro-vae; it is never overwritten: "
                    "move it away or choose another output path"
                )
            made = []
            for parent in reversed(target.parents[:-1]):  # outermost first, the root itself excluded
                d = self.root / parent
                if d.is_symlink() or (d.exists() and not d.is_dir()):
                    raise RunError(f"{str(d)!r} is not a folder; pyro-vae cannot write {key!r} there")
                if not d.exists():
                    try:
                        d.mkdir()
                    except OSError as e:
                        raise RunError(f"cannot create {str(d)!r}: {e.strerror or e}") from None
                    made.append(parent.as_posix())
            m["dirs"].extend(made)
            m["files"].append(key)
        return full

    def claim(self, path: str | os.PathLike[str]) -> Path:
        """:meth:`path` for a path given as the user sees it (relative to the working directory or
        absolute), which must lie inside this directory; returns it unchanged."""
        p = Path(path)
        if not is_inside(p, self.root):
            raise RunError(f"{str(p)!r} is outside {str(self.root)!r}")
        real = Path(os.path.realpath(p.parent)) / p.name
        self.path(real.relative_to(os.path.realpath(self.root)))
        return p

    def write_text(self, rel: str | os.PathLike[str], text: str) -> Path:
        """Record and atomically write a text file."""
        from .checkpoint import atomic_write_text

        p = self.path(rel)
        atomic_write_text(p, text)
        return p

    def record_existing(self, paths: Iterable[str | os.PathLike[str]]) -> None:
        """Record files and folders inside the directory that another library already created (with
        names it chose, e.g. a tracker's event files), so that ``--force`` removes them too."""
        with self._editing() as m:
            for f in map(Path, paths):
                rel = Path(os.path.relpath(os.path.realpath(f), os.path.realpath(self.root)))
                if not _safe_rel(rel.as_posix()):
                    raise RunError(f"{str(f)!r} is not a path inside {str(self.root)!r}")
                for d in [*reversed(rel.parents[:-1])] + ([rel] if f.is_dir() else []):
                    if d.as_posix() not in m["dirs"]:
                        m["dirs"].append(d.as_posix())
                if not f.is_dir() and rel.as_posix() not in m["files"]:
                    m["files"].append(rel.as_posix())

    def add_run(self, rel: str | os.PathLike[str]) -> Path:
        """Record a nested run directory (a comparison's job), cleared through its own manifest."""
        key = Path(rel).as_posix()
        if not _safe_rel(key):
            raise RunError(f"{key!r} is not a path inside {str(self.root)!r}")
        with self._editing() as m:
            made = []
            for parent in reversed(Path(key).parents[:-1]):
                if not (self.root / parent).exists():
                    made.append(parent.as_posix())
            m["dirs"].extend(made)
            m["runs"].append(key)
        return self.root / key

    def clear(self, under: str = "") -> list[Path]:
        """Delete the files the manifest names (those in folder ``under`` only, when given), nested runs'
        files, their stale temp files and the folders the tool created once empty; nothing else."""
        removed: list[Path] = []
        prefix = Path(under).as_posix().rstrip("/") + "/" if under else ""
        with self._editing() as m:
            for key in [k for k in m["runs"] if k.startswith(prefix)]:
                sub = RunDir(self.root / key)
                if sub.root.is_dir() and not sub.root.is_symlink() and is_inside(sub.root, self.root) and sub.is_run():
                    with sub:
                        sub.lock(exclusive=True, command="clear")
                        removed += sub.clear()
                        for name in (MANIFEST, LOCK):
                            _unlink(sub.root / name)
                    _rmdir(sub.root)
                m["runs"].remove(key)
            for key in [k for k in m["files"] if k.startswith(prefix)]:
                p = self.root / key
                if not is_inside(p.parent, self.root):  # a folder replaced by a link to elsewhere: not ours
                    m["files"].remove(key)
                    continue
                if _unlink(p):
                    removed.append(p)
                for tmp in p.parent.glob(f".{p.name}.*.tmp"):  # left by a killed atomic write
                    _unlink(tmp)
                m["files"].remove(key)
            inside = [k for k in m["dirs"] if k.startswith(prefix) or k == under.rstrip("/")]
            for key in sorted(inside, key=len, reverse=True):
                if _rmdir(self.root / key) or not (self.root / key).exists():
                    m["dirs"].remove(key)
        return removed


def _safe_rel(key: str) -> bool:
    p = Path(key)
    return bool(key) and not p.is_absolute() and ".." not in p.parts and key not in (".", MANIFEST, LOCK)


def _unlink(p: Path) -> bool:
    try:
        if p.is_symlink() or p.is_file():
            p.unlink()
            return True
    except FileNotFoundError:
        pass
    except OSError as e:
        raise RunError(f"cannot remove {str(p)!r}: {e.strerror or e}") from None
    return False


def _rmdir(p: Path) -> bool:
    try:
        p.rmdir()  # only when empty: a user's file inside keeps the folder
        return True
    except OSError:
        return False


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


# --------------------------------------------------------------------------- opening


#: What a run directory written before manifests existed holds, by the names that version used.
_EARLIER_RUN_FILES = (
    "config.yaml",
    "metrics.jsonl",
    "summary.json",
    "checkpoint.pt",
    "best.pt",
    "eval.json",
    "gradients.json",
)
_EARLIER_FIGURES = ("loss.png", "reconstructions.png", "samples.png", "latent.png", "manifold.png", "samples_cli.png")


def earlier_run_files(root: Path) -> list[str]:
    """The run-contract files of a run directory made before manifests existed (it holds
    ``config.yaml`` and ``checkpoint.pt``), adopted as the tool's own; [] for any other directory."""
    if not ((root / "config.yaml").is_file() and (root / "checkpoint.pt").is_file()):
        return []
    from .checkpoint import load

    try:  # a pyro-vae checkpoint (tensors and plain containers, its format mark), not a namesake
        load(root / "checkpoint.pt")
    except RunError:
        return []
    names = [*_EARLIER_RUN_FILES, *(f"figures/{f}" for f in _EARLIER_FIGURES)]
    return [n for n in names if (root / n).is_file() and not (root / n).is_symlink()]


def open_writer(root: str | os.PathLike[str], *, force: bool, resume: bool, command: str,
                flag: str = "--out") -> RunDir:  # fmt: skip
    """Take ``root`` for writing: create it, or continue it (``resume``), or empty it of the tool's
    files (``force``); lock it exclusively. A non-empty directory the tool did not make is refused."""
    what = "run directory" if command == "train" else "output directory"
    root = check_out_dir(root, flag, what)
    run = RunDir(root)
    shown = str(root)

    def refuse_foreign() -> None:
        if resume:
            raise RunError(f"{shown!r} is not a pyro-vae run directory (no {MANIFEST}); nothing to resume")
        raise RunError(
            f"{shown!r} is not empty and was not made by pyro-vae (no {MANIFEST}); pyro-vae only writes into new, "
            "empty or its own directories: choose another --out"
        )

    def refuse_existing() -> None:
        if command == "train":
            raise RunError(f"{what} {shown!r} already exists; use --resume to continue it or --force to overwrite")
        raise RunError(f"{what} {shown!r} already exists; use --force to replace what pyro-vae wrote there")

    if root.is_dir() and not run.is_run() and run.foreign_entries() and not earlier_run_files(root):
        refuse_foreign()  # before the lock file: nothing is written into a directory that is not ours
    if resume and not root.is_dir():
        raise RunError(f"run directory {shown!r} does not exist; nothing to resume")
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise RunError(f"cannot create run directory {shown!r}: {e.strerror or e}") from None
    run.lock(exclusive=True, command=command)
    try:
        if not run.is_run():
            earlier = earlier_run_files(root)  # a run made before manifests: its own files are adopted
            if run.foreign_entries() and not earlier:  # filled by someone else meanwhile
                refuse_foreign()
            run._write_manifest({"files": earlier, "dirs": ["figures"] if any("/" in f for f in earlier) else [],
                                 "runs": []})  # fmt: skip
        if not resume:
            m = run.read_manifest()
            has_content = m["files"] or m["runs"] or [n for n in run.foreign_entries() if n != MANIFEST]
            if has_content and not force:
                refuse_existing()
            if force:
                run.clear()
    except BaseException:
        run.release()
        raise
    return run


def open_reader(root: str | os.PathLike[str], command: str) -> RunDir:
    """Hold ``root``'s lock shared while reading it: refused while a writer holds it."""
    run = RunDir(root)
    if Path(root).is_dir() and (run.is_run() or (Path(root) / LOCK).exists()):
        run.lock(exclusive=False, command=command)
    return run


def releases_locks(fn: F) -> F:
    """Release every run lock ``fn`` takes when it returns or raises (the OS does it when the
    process ends; a library call must do it before handing control back)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        token = _HELD.set([])
        try:
            return fn(*args, **kwargs)
        finally:
            for r in _HELD.get() or []:
                r.release()
            _HELD.reset(token)

    return wrapper  # type: ignore[return-value]


__all__ = [
    "LOCK",
    "MANIFEST",
    "RunDir",
    "check_out_dir",
    "check_out_file",
    "check_run_name",
    "is_inside",
    "open_reader",
    "open_writer",
    "releases_locks",
]
