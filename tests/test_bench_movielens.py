"""benchmarks.movielens: MovieLens' own files (written here by hand, a few rows in each
layout) into a click set cut by time."""

import csv

import pytest

from benchmarks import movielens
from gin_jax.data.formats import CsvSchema

# ml-100k: u.data (user, item, rating, timestamp; tab-separated), u.item, u.user.
U_DATA = """0\t1\t5\t100
1\t1\t4\t300
2\t2\t2\t200
1\t2\t5\t100
2\t1\t3\t500
1\t3\t1\t400
2\t3\t4\t600
1\t1\t5\t700
2\t2\t4\t800
1\t2\t3\t900
"""
FLAGS = ["0"] * 19


def _item(i, title, date, genres):
  flags = list(FLAGS)
  for g in genres:
    flags[movielens.GENRES_100K.index(g)] = "1"
  return "|".join([str(i), title, date, "", "http://x", *flags])


U_ITEM = "\n".join([
  _item(1, "Toy Story (1995)", "01-Jan-1995", ["Animation", "Comedy"]),
  _item(2, "GoldenEye (1995)", "01-Jan-1995", ["Action"]),
  _item(3, "unknown", "", ["unknown"]),
]) + "\n"  # fmt: skip
U_USER = "1|24|M|technician|85711\n2|53|F|other|94043\n"


def _rows(path):
  with open(path, newline="") as f:
    return list(csv.DictReader(f))


def test_ml100k_is_cut_by_time_into_periods_with_user_features(tmp_path):
  data = tmp_path / "ml-100k"
  data.mkdir()
  (data / "u.data").write_text(U_DATA)
  (data / "u.item").write_text(U_ITEM)
  (data / "u.user").write_text(U_USER)
  counts = movielens.build(str(data), str(tmp_path / "out"), (60, 20, 20))
  # user 0 is not in u.user: skipped and counted; 9 ratings left, cut 5 / 2 / 2
  assert counts["skipped_rows"] == 1
  assert (counts["period1"], counts["period2"], counts["period3"]) == (5, 2, 2)
  p1, p2, p3 = (_rows(tmp_path / "out" / f"period{i}.csv") for i in (1, 2, 3))
  # time order: the oldest rating (user 1, movie 2, t=100) first, the newest (t=900) last
  assert (p1[0]["user"], p1[0]["movie"], p1[0]["click"]) == ("u1", "m2", "1")
  assert (p3[-1]["user"], p3[-1]["movie"], p3[-1]["click"]) == ("u1", "m2", "0")
  assert p2[0]["movie"] == "m3"  # t=600, rating 4
  first = p1[0]
  assert (first["age"], first["gender"], first["occupation"]) == ("18", "M", "technician")
  assert first["year"] == "1995" and first["genres"] == "Action"
  toy = next(r for r in p1 if r["movie"] == "m1")
  assert toy["genres"] == "Animation|Comedy" and toy["first_genre"] == "Animation"
  assert next(r for r in p1 if r["movie"] == "m3")["genres"] == ""  # "unknown" is no genre
  # the history: the user's earlier movies, the most recent last
  last = p3[-1]
  assert last["history"].split() == ["m2", "m1", "m3", "m1"]  # the movie column's tokens
  users = (tmp_path / "out" / "users.yaml").read_text()
  assert "categorical: [user, movie, year, age, gender, occupation]" in users
  assert "age, gender, occupation" in (tmp_path / "out" / "genres.yaml").read_text()
  # the history schemas of issue #35: on the movie's rows, mean-pooled or by attention
  for name, pooling in (("history_shared", "{history: movie}"),
                        ("history_attention", "pooling: attention, target: movie")):  # fmt: skip
    schema = CsvSchema.load(tmp_path / "out" / f"{name}.yaml")
    assert schema.share_embedding == (("history", "movie"),) and pooling.split(",")[0] in (
      tmp_path / "out" / f"{name}.yaml").read_text()  # fmt: skip


def test_latest_small_keeps_its_80_20_split_and_refuses_bad_periods(tmp_path):
  data = tmp_path / "ml-latest-small"
  data.mkdir()
  (data / "movies.csv").write_text(
    'movieId,title,genres\n1,Toy Story (1995),Animation|Comedy\n2,"Heat, The (1995)",Action\n'
  )
  (data / "tags.csv").write_text('userId,movieId,tag,timestamp\n1,1,"pixar, fun",5\n')
  ratings = "".join(
    f"{1 + i % 2},{1 + i % 3 // 2},{1 + i % 5},{10 * (10 - i)}\n" for i in range(10)
  )
  (data / "ratings.csv").write_text("userId,movieId,rating,timestamp\n" + ratings)
  with pytest.MonkeyPatch.context() as mp:
    mp.setattr(movielens, "RATINGS_LINES", 11)
    counts = movielens.build(str(data), str(tmp_path / "out"))
    assert (counts["train"], counts["test"]) == (8, 2)
    train = _rows(tmp_path / "out" / "train.csv")
    assert "age" not in train[0]  # no user features in latest-small
    assert [int(r["click"]) for r in train] == [int(1 + (9 - k) % 5 >= 4) for k in range(8)]
    assert next(r for r in train if r["user"] == "u1" and r["movie"] == "m1")["tags"] == "pixar fun"
    with pytest.raises(ValueError, match="summing to 100"):
      movielens.build(str(data), str(tmp_path / "bad"), (60, 20))
  with pytest.raises(FileNotFoundError, match="neither"):
    movielens.build(str(tmp_path), str(tmp_path / "none"))
