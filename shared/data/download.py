"""`vidrec data download NAME`: fetch a dataset from its official source and verify checksums.

Never called by tests or the build (no network at run time); it is how a real user gets the
files that the loaders read.
"""

from __future__ import annotations

import hashlib
import shutil
import tempfile
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Source:
    url: str
    folder: str
    files: dict[str, str]  # file inside `folder` -> sha256 of the verified copy
    archive_prefix: str = ""  # path inside a zip archive; "" = files fetched one by one


SOURCES: dict[str, Source] = {
    "ml-latest-small": Source(
        url="https://files.grouplens.org/datasets/movielens/ml-latest-small.zip",
        folder="ml-latest-small",
        archive_prefix="ml-latest-small/",
        files={
            "ratings.csv": "80da8b3393dae325bbba5a31f291a6ba55d8d4f4396de3c456f2c1635b1b70e8",
            "movies.csv": "c47b783f23eb304413307e1bb05335e427737da20ec8d3c0e96335567dd5f3dc",
            "tags.csv": "68eec00a0820c2faa8863a6df7032f13d5899a4462bce9a97213905297ff3d34",
            "links.csv": "028a4a1d17751ca9276e0e0718cfc22356350f224a996e1ec348c23274b9209d",
        },
    ),
    "microlens-50k": Source(
        url="https://recsys.westlake.edu.cn/MicroLens-50k-Dataset/",
        folder="microlens-50k",
        files={
            "MicroLens-50k_pairs.tsv":
                "46be22f478aa891b9c2a4b357c1df2ac2478793a99d58d07336e6277b6bf426d",
            "MicroLens-50k_titles.csv":
                "ad9af3c0c954ec0f3af2fda73e6c2b4c56cec6bf404f5aa5d6253bb203101288",
        },
    ),
}


class ChecksumError(RuntimeError):
    pass


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def verify(folder: Path, source: Source) -> None:
    for name, expected in source.files.items():
        path = folder / name
        if not path.is_file():
            raise ChecksumError(f"{path}: missing after download")
        got = sha256(path)
        if got != expected:
            raise ChecksumError(f"{path}: sha256 {got} does not match the published {expected}")


def download(name: str, dest: Path | str) -> Path:
    if name not in SOURCES:
        raise SystemExit(f"unknown dataset {name!r}; choose one of {', '.join(SOURCES)}")
    source = SOURCES[name]
    target = Path(dest) / source.folder
    target.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        if source.archive_prefix:
            archive = Path(tmp) / "data.zip"
            _fetch(source.url, archive)
            with zipfile.ZipFile(archive) as zf:
                for fname in source.files:
                    with zf.open(source.archive_prefix + fname) as src, \
                            (Path(tmp) / fname).open("wb") as dst:
                        shutil.copyfileobj(src, dst)
        else:
            for fname in source.files:
                _fetch(source.url + fname, Path(tmp) / fname)
        verify(Path(tmp), source)
        for fname in source.files:
            shutil.move(str(Path(tmp) / fname), target / fname)
    print(f"{name}: {len(source.files)} files verified in {target}")
    return target


def _fetch(url: str, out: Path) -> None:
    print(f"downloading {url}")
    with urllib.request.urlopen(url, timeout=60) as resp, out.open("wb") as fh:
        shutil.copyfileobj(resp, fh)
