"""A click-through set with list fields from MovieLens "latest-small", split by time.

  python -m benchmarks.movielens --data DIR --out OUT

DIR holds ml-latest-small's ratings.csv, movies.csv and tags.csv (fetched, never
committed: MovieLens' licence forbids redistribution). OUT receives:

  train.csv, test.csv  the oldest 80% of the ratings (train + valid) and the newest
                       20% (test), by timestamp: a random split would leak the
                       future into the history field
  first_genre.yaml     schema: user, movie, year, the first genre, tags
  genres.yaml          schema: user, movie, year, genres (multi-valued), tags
  history.yaml         schema: genres.yaml plus the user's 20 previous movies

The label is rating >= 4. `tags` are the user's own tags on the movie
(multi-valued, mostly empty); `history` the movies the user rated strictly
before this rating, the most recent last. Commas, pipes and quotes inside a
tag become spaces (the csv format reads no quoted fields). The copy of
ratings.csv this project fetches ends with one extra row (999,999999,...)
that is not MovieLens data: only the first RATINGS_LINES lines are read.
Then, for example:

  python -m benchmarks.quality --name movielens_genres --format csv \\
      --train OUT/train.csv --test OUT/test.csv --split 0.875,0.125 --schema OUT/genres.yaml
"""

from __future__ import annotations

import argparse
import collections
import csv
import os
import re

RATINGS_LINES = 100_837  # the header and MovieLens latest-small's 100,836 ratings
HISTORY = 20  # previous movies of the user kept in `history`

SCHEMAS = {
  "first_genre": "categorical: [user, movie, year, first_genre]\n"
  "multi_valued:\n  tags: '|'\nignore: [genres, history]\n",
  "genres": "categorical: [user, movie, year]\n"
  "multi_valued:\n  genres: '|'\n  tags: '|'\nignore: [first_genre, history]\n",
  "history": "categorical: [user, movie, year]\n"
  "multi_valued:\n  genres: '|'\n  tags: '|'\n"
  f"  history: {{separator: ' ', max_values: {HISTORY}}}\nignore: [first_genre]\n",
}


def _clean(tag: str) -> str:
  return re.sub(r"[,|\"\s]+", " ", tag).strip()


def build(data: str, out: str) -> dict:
  """Writes OUT's files (see the module docstring); returns counts of what it wrote."""
  movies = {}
  with open(os.path.join(data, "movies.csv"), newline="", encoding="utf-8") as f:
    for row in csv.DictReader(f):
      year = re.search(r"\((\d{4})\)\s*$", row["title"])
      genres = [] if row["genres"] == "(no genres listed)" else row["genres"].split("|")
      movies[row["movieId"]] = (year.group(1) if year else "", genres)
  tags = collections.defaultdict(set)
  with open(os.path.join(data, "tags.csv"), newline="", encoding="utf-8") as f:
    for row in csv.DictReader(f):
      if tag := _clean(row["tag"]):
        tags[(row["userId"], row["movieId"])].add(tag)
  with open(os.path.join(data, "ratings.csv"), encoding="utf-8") as f:
    lines = [next(f) for _ in range(RATINGS_LINES)]
  ratings = [tuple(x.strip().split(",")) for x in lines[1:]]
  order = sorted(range(len(ratings)), key=lambda i: (int(ratings[i][3]), i))
  seen = collections.defaultdict(list)  # user -> [(timestamp, movie)] in time order
  cut = int(0.8 * len(order))
  os.makedirs(out, exist_ok=True)
  header = "click,user,movie,year,first_genre,genres,tags,history\n"
  files = {name: open(os.path.join(out, f"{name}.csv"), "w") for name in ("train", "test")}
  positives = collections.Counter()
  try:
    for f in files.values():
      f.write(header)
    for rank, i in enumerate(order):
      user, movie, rating, ts = ratings[i]
      year, genres = movies.get(movie, ("", []))
      history = [m for t, m in seen[user] if t < int(ts)][-HISTORY:]
      click = int(float(rating) >= 4.0)
      split = "train" if rank < cut else "test"
      positives[split] += click
      files[split].write(
        f"{click},u{user},m{movie},{year},{genres[0] if genres else ''},{'|'.join(genres)},"
        f"{'|'.join(sorted(tags.get((user, movie), ())))},{' '.join(history)}\n"
      )
      seen[user].append((int(ts), movie))
  finally:
    for f in files.values():
      f.close()
  for name, body in SCHEMAS.items():
    with open(os.path.join(out, f"{name}.yaml"), "w") as f:
      f.write("label: click\n" + body)
  sizes = {"train": cut, "test": len(order) - cut}
  rate = {k: positives[k] / n for k, n in sizes.items()}
  return {"ratings": len(ratings), **sizes, "positive_rate": rate}


def main(argv=None) -> dict:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--data", required=True, help="folder with ml-latest-small's csv files")
  p.add_argument("--out", required=True, help="where the CTR set is written")
  args = p.parse_args(argv)
  counts = build(args.data, args.out)
  print(f"wrote {args.out}: {counts}")
  return counts


if __name__ == "__main__":
  main()
