"""MovieLens-100K read straight out of the recbole wheel (a tiny fake one, and the real
one when `make setup` has downloaded it)."""

import zipfile

import numpy as np
import pytest

from trainer.data.readers.base import DataError
from trainer.data.readers.ml100k import DEFAULT_WHEEL, MEMBER, MovieLens100KReader

INTER = (
    "user_id:token\titem_id:token\trating:float\ttimestamp:float\n"
    "196\t242\t3\t881250949\n186\t302\t4\t891717742\n22\t242\t5\t878887116\n"
)
USER = (
    "user_id:token\tage:token\tgender:token\toccupation:token\tzip_code:token\n"
    "196\t49\tM\twriter\t55105\n186\t39\tF\texecutive\t00000\n22\t25\tM\twriter\t40206\n"
)
ITEM = (
    "item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq\n"
    "242\tKolya\t1996\tComedy\n302\tL.A. Confidential\t1997\tCrime Film-Noir Mystery Thriller\n"
)


def fake_wheel(path, inter=INTER, user=USER, item=ITEM):
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("recbole/__init__.py", "")
        for ext, text in (("inter", inter), ("user", user), ("item", item)):
            z.writestr(MEMBER.format(ext), text)
    return str(path)


def read_all(reader):
    chunks = list(reader.iter_chunks(2))
    return np.concatenate([c.labels for c in chunks]), {
        k: [v for c in chunks for v in c.columns[k]] for k in chunks[0].columns
    }


def test_fake_wheel_join_and_label_rule(tmp_path):
    r = MovieLens100KReader(fake_wheel(tmp_path / "w.whl"))
    assert [d.name for d in r.fields()] == [
        "user_id", "item_id", "age", "gender", "occupation", "zip_code", "release_year", "genres",
    ]  # fmt: skip
    labels, cols = read_all(r)
    assert labels.tolist() == [0, 1, 1]  # rating >= 4 is a click
    assert cols["user_id"] == ["196", "186", "22"] and cols["item_id"] == ["242", "302", "242"]
    assert cols["age"] == ["49", "39", "25"] and cols["gender"] == ["M", "F", "M"]
    assert cols["occupation"][1] == "executive" and cols["zip_code"][1] == "00000"
    assert cols["release_year"] == ["1996", "1997", "1996"]
    assert cols["genres"][1] == ["Crime", "Film-Noir", "Mystery", "Thriller"] and cols["genres"][0] == ["Comedy"]


def test_fake_wheel_errors(tmp_path):
    with pytest.raises(DataError, match=r"make setup"):
        MovieLens100KReader(tmp_path / "missing.whl")
    bad = fake_wheel(tmp_path / "b.whl", inter=INTER + "999\t242\t5\t1\n186\t302\tfive\t1\n")
    with pytest.raises(DataError, match=r"ml-100k.inter:5: user_id '999' has no user record"):
        read_all(MovieLens100KReader(bad))
    r = MovieLens100KReader(bad, max_bad_lines=2)
    labels, _ = read_all(r)
    assert len(labels) == 3 and r.bad_lines == 2
    short = fake_wheel(tmp_path / "s.whl", user=USER + "7\t20\tM\n")
    with pytest.raises(DataError, match=r"ml-100k.user:5: expected 5 columns, found 3"):
        read_all(MovieLens100KReader(short))
    header = fake_wheel(tmp_path / "h.whl", item=ITEM.replace("class:token_seq", "genre:token_seq"))
    with pytest.raises(DataError, match=r"ml-100k.item:1: header lacks column\(s\) \['class'\]"):
        read_all(MovieLens100KReader(header))
    not_zip = tmp_path / "n.whl"
    not_zip.write_text("hello")
    with pytest.raises(DataError, match="not a readable"):
        read_all(MovieLens100KReader(not_zip))


@pytest.mark.skipif(not DEFAULT_WHEEL.is_file(), reason="recbole wheel not downloaded (make setup)")
def test_real_wheel_has_100k_ratings():
    r = MovieLens100KReader()
    n = pos = 0
    for chunk in r.iter_chunks(1 << 15):
        n += len(chunk)
        pos += int(chunk.labels.sum())
        assert all(chunk.columns["genres"])  # every item has at least one genre ("unknown")
    assert n == 100_000 and r.bad_lines == 0
    assert 0.5 < pos / n < 0.6  # ML-100K: 55% of ratings are 4 or 5


def test_age_and_release_year_as_numbers(tmp_path):
    item = ITEM + "303\tOdd\tunkonwn\tDrama\n"
    inter = INTER + "22\t303\t4\t878887117\n"
    wheel = fake_wheel(tmp_path / "w.whl", inter=inter, item=item)
    plain, numbers = MovieLens100KReader(wheel), MovieLens100KReader(wheel, numerical=("release_year", "age"))
    kinds = {f.name: f.kind for f in numbers.fields()}
    assert kinds["age"] == kinds["release_year"] == "numerical" and kinds["gender"] == "categorical"
    assert plain.fingerprint() != numbers.fingerprint()
    _, cols = read_all(numbers)
    assert cols["age"] == ["49", "39", "25", "25"] and cols["release_year"] == ["1996", "1997", "1996", ""]  # not a year → missing
    with pytest.raises(ValueError, match="cannot be read as numbers"):
        MovieLens100KReader(wheel, numerical=("gender",))
