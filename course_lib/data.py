"""Labelled movie-review sentences, offline: fetched once from PyPI, checked, cached, split.

The sdist of ``vaderSentiment==3.3.2`` (MIT) carries the data of Hutto & Gilbert (ICWSM 2014):
10,605 movie-review snippets (Rotten Tomatoes, Pang & Lee) each with the mean rating of 20 or more
people from -4 to +4. pip fetches it from the package index (the one network the course may use);
its SHA-256 is checked; the sentences become CSV splits in a git-ignored cache, loaded with
Hugging Face ``datasets``. See ``data/README.md``.
"""

from __future__ import annotations

import csv
import hashlib
import io
import os
import random
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

SDIST = "vaderSentiment==3.3.2"
SDIST_FILE = "vaderSentiment-3.3.2.tar.gz"
SDIST_SHA256 = "5d7c06e027fc8b99238edb0d53d970cf97066ef97654009890b83703849632f9"
INNER_ARCHIVE = "vaderSentiment-3.3.2/additional_resources/hutto_ICWSM_2014.tar.gz"
MOVIE_FILE = "hutto_ICWSM_2014/movieReviewSnippets_GroundTruth.txt"
RATED_FILES = {  # every rated text set in the archive: the unlabelled corpus for pretraining
    "movie reviews": MOVIE_FILE,
    "tweets": "hutto_ICWSM_2014/tweets_GroundTruth.txt",
    "amazon reviews": "hutto_ICWSM_2014/amazonReviewSnippets_GroundTruth.txt",
    "nyt editorials": "hutto_ICWSM_2014/nytEditorialSnippets_GroundTruth.txt",
}
SPLITS = {"train": 0.8, "validation": 0.1, "test": 0.1}
SPLIT_SEED = 1234  # fixed: every learner, test and chapter sees the same splits
LOCAL_NAME = "movie-reviews"


class DataError(RuntimeError):
    """The data could not be fetched or prepared; the message says what failed and how to fix it."""


def cache_dir() -> Path:
    """Where fetched and prepared data live: ``COURSE_DATA_CACHE`` or ``data/cache/`` (git-ignored)."""
    if os.environ.get("COURSE_DATA_CACHE"):
        return Path(os.environ["COURSE_DATA_CACHE"])
    from course_lib.runtime import repo_root

    return repo_root() / "data" / "cache"


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _download(target: Path) -> None:
    """``pip download`` the sdist into ``target`` (a folder), echoing pip's progress lines."""
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
               "--disable-pip-version-check", "--progress-bar", "off", "--timeout", "20", "--retries", "2",
               "-d", str(target), SDIST]
    print(f"fetching {SDIST} (2.5 MB) from the package index into {target.parent} ...", flush=True)
    lines: list[str] = []
    try:
        with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) as pip:
            for line in pip.stdout:
                line = line.rstrip()
                if line and "is ignored" not in line:  # notices about this machine's local indexes
                    lines.append(line)
                    print(f"  pip: {line}", flush=True)
        returncode = pip.returncode
    except OSError as error:  # pip (or Python itself) could not be started
        returncode, lines = -1, [str(error)]
    if returncode != 0:
        raise DataError(
            f"could not download {SDIST} with pip (exit {returncode}): "
            f"{lines[-1] if lines else 'no output'}\n"
            f"Fix: connect to the package index once and run again, or copy {SDIST_FILE} "
            f"(sha256 {SDIST_SHA256}) into {target.parent}"
        )


def fetch_sdist(cache: Path | None = None) -> Path:
    """The verified sdist in the cache, downloading it first if needed. A download whose hash does
    not match is deleted and reported; nothing half-written is ever left under its final name."""
    cache = cache or cache_dir()
    final = cache / SDIST_FILE
    if final.is_file():
        if sha256(final) == SDIST_SHA256:
            return final
        final.unlink()  # a damaged cached copy: fetch it again
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache, prefix=".download-") as tmp:
        _download(Path(tmp))
        fetched = Path(tmp) / SDIST_FILE
        if not fetched.is_file():
            raise DataError(f"pip reported success but {SDIST_FILE} is not in {tmp}")
        actual = sha256(fetched)
        if actual != SDIST_SHA256:
            raise DataError(
                f"{SDIST_FILE} has sha256 {actual}, expected {SDIST_SHA256}: the download was "
                "discarded. Fix: check the package index you use (pip config list) and run again"
            )
        os.replace(fetched, final)
    return final


@dataclass(frozen=True)
class Rated:
    """One rated text: its id in the source file, the mean human rating (-4..4), the text."""

    id: int
    rating: float
    text: str


def read_rated(sdist: Path, member: str = MOVIE_FILE) -> list[Rated]:
    """The rated texts of one file of the archive inside the sdist (tab-separated id, rating, text;
    CRLF line ends; quotes are literal characters, never CSV quoting)."""
    try:
        with tarfile.open(sdist) as outer:
            inner_bytes = outer.extractfile(INNER_ARCHIVE).read()
        with tarfile.open(fileobj=io.BytesIO(inner_bytes)) as inner:
            raw = inner.extractfile(member).read().decode("utf-8")
    except (tarfile.TarError, KeyError, AttributeError, UnicodeDecodeError) as error:
        raise DataError(f"{sdist} does not hold {member} as expected ({error}); delete it and run again") from None
    rows = []
    for fields in csv.reader(io.StringIO(raw.replace("\r\n", "\n")), delimiter="\t", quoting=csv.QUOTE_NONE):
        if fields:
            rows.append(Rated(int(fields[0]), float(fields[1]), fields[2].strip()))
    return rows


def split_rows(rows: list[Rated], seed: int = SPLIT_SEED) -> dict[str, list[Rated]]:
    """Shuffle with a fixed seed and cut 80/10/10 into train, validation and test."""
    order = list(rows)
    random.Random(seed).shuffle(order)
    n_train = round(SPLITS["train"] * len(order))
    n_val = round(SPLITS["validation"] * len(order))
    return {"train": order[:n_train], "validation": order[n_train:n_train + n_val], "test": order[n_train + n_val:]}


def labelled_rows(sdist: Path) -> list[Rated]:
    """The movie reviews with a sentiment: the 37 rated exactly 0 dropped, and a repeated sentence
    kept once (2 sentences occur twice), so no sentence can be in two splits."""
    seen: set[str] = set()
    rows = []
    for row in read_rated(sdist):
        if row.rating != 0 and row.text not in seen:
            seen.add(row.text)
            rows.append(row)
    return rows


def _write_csv(rows: list[Rated], path: Path) -> None:
    tmp = path.with_suffix(".tmp")
    with tmp.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["text", "label", "rating", "id"])
        for row in rows:
            writer.writerow([row.text, int(row.rating > 0), row.rating, row.id])
    os.replace(tmp, path)  # appears complete or not at all


def prepare_movie_reviews(cache: Path | None = None) -> dict[str, Path]:
    """CSV files of the binary movie-review splits (label 1 = positive rating; see
    :func:`labelled_rows`), written once into the cache."""
    cache = cache or cache_dir()
    folder = cache / LOCAL_NAME
    paths = {name: folder / f"{name}.csv" for name in SPLITS}
    if all(p.is_file() for p in paths.values()):
        return paths
    rows = labelled_rows(fetch_sdist(cache))
    folder.mkdir(parents=True, exist_ok=True)
    for name, part in split_rows(rows).items():
        _write_csv(part, paths[name])
    return paths


def check_labelled_splits(dataset, name: str):
    """``dataset`` unchanged if it has train, validation and test splits, each with a ``text`` and a
    ``label`` column and no unlabelled rows (GLUE's test splits carry label -1); otherwise an error
    that says what is missing, instead of a KeyError deep inside a chapter."""
    missing = [split for split in ("train", "validation", "test") if split not in dataset]
    if missing:
        raise ValueError(f"dataset {name!r} must have train, validation and test splits, got {sorted(dataset)}")
    for split in ("train", "validation", "test"):
        columns = dataset[split].column_names
        if "text" not in columns or "label" not in columns:
            raise ValueError(f"dataset {name!r} must have 'text' and 'label' columns, its {split} split has {columns}")
        if min(dataset[split]["label"]) < 0:
            raise ValueError(f"dataset {name!r}: its {split} split has unlabelled rows (label -1), so it cannot be scored")
    return dataset


def load_movie_reviews(dataset: str = LOCAL_NAME, cache: Path | None = None):
    """The labelled sentences as a ``datasets.DatasetDict`` (train / validation / test; columns
    text, label, rating, id). ``dataset`` may name a hub data set with the same splits and ``text``
    and ``label`` columns instead (e.g. ``"cornell-movie-review-data/rotten_tomatoes"``, Pang & Lee's
    sentence polarity data), which needs the network."""
    from datasets import load_dataset

    if dataset != LOCAL_NAME:
        return check_labelled_splits(load_dataset(dataset), dataset)
    paths = prepare_movie_reviews(cache)
    return load_dataset("csv", data_files={name: str(path) for name, path in paths.items()},
                        cache_dir=str((cache or cache_dir()) / "hf-datasets"))


def unlabelled_texts(cache: Path | None = None, sources: tuple[str, ...] = tuple(RATED_FILES)) -> Iterator[str]:
    """Every text of the chosen rated sets, without ratings: a small corpus for pretraining. The
    movie-review test split is left out, so a model pretrained on it never saw the test sentences."""
    sdist = fetch_sdist(cache or cache_dir())
    held_out = {r.text for r in split_rows(labelled_rows(sdist))["test"]}
    for source in sources:
        if source not in RATED_FILES:
            raise ValueError(f"sources must be among {sorted(RATED_FILES)}, got {source!r}")
        for row in read_rated(sdist, RATED_FILES[source]):
            if not (source == "movie reviews" and row.text in held_out):
                yield row.text

