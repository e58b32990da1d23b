"""A click-through set with list fields from MovieLens (latest-small or 100k), split by time.

  python -m benchmarks.movielens --data DIR --out OUT
  python -m benchmarks.movielens --data DIR --out OUT --periods 60,20,20

DIR holds either ml-latest-small's ratings.csv, movies.csv and tags.csv, or
ml-100k's u.data, u.item and u.user (fetched, never committed: MovieLens'
licence forbids redistribution). OUT receives:

  train.csv, test.csv  the oldest 80% of the ratings (train + valid) and the newest
                       20% (test), by timestamp: a random split would leak the
                       future into the history field
  period1.csv ...      with --periods P1,P2,...: the ratings cut by time into
                       consecutive periods of those percentages (oldest first),
                       the days of `benchmarks.incremental --days`
  first_genre.yaml     schema: user, movie, year, the first genre, tags
  genres.yaml          schema: user, movie, year, genres (multi-valued), tags
  history.yaml         schema: genres.yaml plus the user's 20 previous movies
                       (mean-pooled, a vocabulary of their own)
  history_shared.yaml  the same history on the movie field's rows (share_embedding)
  history_attention.yaml  ... pooled by attention against the candidate movie
                       (pooling: attention, target: movie; DIN's activation unit)
  users.yaml           (100k only) schema: genres.yaml plus the user's age band,
                       gender and occupation

The label is rating >= 4. `tags` are the user's own tags on the movie
(multi-valued, mostly empty; 100k has none); `history` the movies the user
rated strictly before this rating, the most recent last, as the movie column
writes them (m<id>). Commas, pipes and
quotes inside a tag become spaces (the csv format reads no quoted fields).
The copy of ratings.csv this project fetches ends with one extra row
(999,999999,...) that is not MovieLens data: only the first RATINGS_LINES
lines are read. Rows of u.data whose user is not in u.user (one fetched copy
begins with three rows of a user 0) are skipped and counted. Then, for example:

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
# ml-100k's u.item: 19 genre flags after the 5 leading columns, in u.genre's order.
GENRES_100K = (
  "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime",
  "Documentary", "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery",
  "Romance", "Sci-Fi", "Thriller", "War", "Western",
)  # fmt: skip
USER_COLUMNS = ("age", "gender", "occupation")  # 100k's user features (u.user)

SCHEMAS = {
  "first_genre": "categorical: [user, movie, year, first_genre]\n"
  "multi_valued:\n  tags: '|'\nignore: [genres, history{users}]\n",
  "genres": "categorical: [user, movie, year]\n"
  "multi_valued:\n  genres: '|'\n  tags: '|'\nignore: [first_genre, history{users}]\n",
  "history": "categorical: [user, movie, year]\n"
  "multi_valued:\n  genres: '|'\n  tags: '|'\n"
  f"  history: {{{{separator: ' ', max_values: {HISTORY}}}}}\nignore: [first_genre{{users}}]\n",
  "history_shared": "categorical: [user, movie, year]\n"
  "multi_valued:\n  genres: '|'\n  tags: '|'\n"
  f"  history: {{{{separator: ' ', max_values: {HISTORY}}}}}\n"
  "share_embedding: {{history: movie}}\nignore: [first_genre{users}]\n",
  "history_attention": "categorical: [user, movie, year]\n"
  "multi_valued:\n  genres: '|'\n  tags: '|'\n"
  f"  history: {{{{separator: ' ', max_values: {HISTORY}, pooling: attention, target: movie}}}}\n"
  "share_embedding: {{history: movie}}\nignore: [first_genre{users}]\n",
}
USERS_SCHEMA = (
  "categorical: [user, movie, year, age, gender, occupation]\n"
  "multi_valued:\n  genres: '|'\n  tags: '|'\nignore: [first_genre, history]\n"
)


def _clean(tag: str) -> str:
  return re.sub(r"[,|\"\s]+", " ", tag).strip()


def _age_band(age: str) -> str:
  """ml-1m's age bands (under 18, 18-24, 25-34, 35-44, 45-49, 50-55, 56+)."""
  a = int(age)
  for top, band in ((18, "1"), (25, "18"), (35, "25"), (45, "35"), (50, "45"), (56, "50")):
    if a < top:
      return band
  return "56"


def _read_latest_small(data: str):
  movies, tags = {}, collections.defaultdict(set)
  with open(os.path.join(data, "movies.csv"), newline="", encoding="utf-8") as f:
    for row in csv.DictReader(f):
      year = re.search(r"\((\d{4})\)\s*$", row["title"])
      genres = [] if row["genres"] == "(no genres listed)" else row["genres"].split("|")
      movies[row["movieId"]] = (year.group(1) if year else "", genres)
  with open(os.path.join(data, "tags.csv"), newline="", encoding="utf-8") as f:
    for row in csv.DictReader(f):
      if tag := _clean(row["tag"]):
        tags[(row["userId"], row["movieId"])].add(tag)
  with open(os.path.join(data, "ratings.csv"), encoding="utf-8") as f:
    lines = [next(f) for _ in range(RATINGS_LINES)]
  ratings = [tuple(x.strip().split(",")) for x in lines[1:]]
  return ratings, movies, tags, None, 0


def _read_100k(data: str):
  movies, users = {}, {}
  with open(os.path.join(data, "u.item"), encoding="latin-1") as f:
    for n, line in enumerate(f, 1):
      cols = line.rstrip("\n").split("|")
      if len(cols) != 5 + len(GENRES_100K):
        raise ValueError(f"{f.name}:{n}: {len(cols)} columns, expected {5 + len(GENRES_100K)}")
      year = re.search(r"(\d{4})$", cols[2])
      genres = [g for g, flag in zip(GENRES_100K, cols[5:]) if flag == "1" and g != "unknown"]
      movies[cols[0]] = (year.group(1) if year else "", genres)
  with open(os.path.join(data, "u.user"), encoding="latin-1") as f:
    for n, line in enumerate(f, 1):
      cols = line.rstrip("\n").split("|")
      if len(cols) != 5:
        raise ValueError(f"{f.name}:{n}: {len(cols)} columns, expected 5")
      users[cols[0]] = (_age_band(cols[1]), cols[2], cols[3])
  ratings, skipped = [], 0
  with open(os.path.join(data, "u.data"), encoding="latin-1") as f:
    for n, line in enumerate(f, 1):
      cols = line.split()
      if len(cols) != 4:
        raise ValueError(f"{f.name}:{n}: {len(cols)} columns, expected 4")
      if cols[0] not in users:
        skipped += 1
        continue
      ratings.append(tuple(cols))
  return ratings, movies, {}, users, skipped


def build(data: str, out: str, periods: tuple[float, ...] | None = None) -> dict:
  """Writes OUT's files (see the module docstring); returns counts of what it wrote.

  periods: the percentages of the ratings in each period, oldest first (None: the
  oldest 80% as train.csv, the newest 20% as test.csv).
  """
  if os.path.exists(os.path.join(data, "u.data")):
    ratings, movies, tags, users, skipped = _read_100k(data)
  elif os.path.exists(os.path.join(data, "ratings.csv")):
    ratings, movies, tags, users, skipped = _read_latest_small(data)
  else:
    raise FileNotFoundError(f"{data}: neither ml-latest-small's ratings.csv nor ml-100k's u.data")
  order = sorted(range(len(ratings)), key=lambda i: (int(ratings[i][3]), i))
  if periods is None:
    names, shares = ("train", "test"), (80.0, 20.0)
  else:
    if len(periods) < 2 or any(p <= 0 for p in periods) or abs(sum(periods) - 100) > 1e-6:
      raise ValueError(f"--periods {periods}: two or more positive percentages summing to 100")
    names, shares = tuple(f"period{i + 1}" for i in range(len(periods))), periods
  bounds = [int(sum(shares[: k + 1]) / 100 * len(order)) for k in range(len(shares) - 1)]
  bounds.append(len(order))
  seen = collections.defaultdict(list)  # user -> [(timestamp, movie)] in time order
  os.makedirs(out, exist_ok=True)
  header = "click,user,movie,year,first_genre,genres,tags,history"
  header += "".join(f",{c}" for c in USER_COLUMNS) if users is not None else ""
  files = {name: open(os.path.join(out, f"{name}.csv"), "w") for name in names}
  positives, sizes = collections.Counter(), collections.Counter()
  try:
    for f in files.values():
      f.write(header + "\n")
    part = 0
    for rank, i in enumerate(order):
      while rank >= bounds[part]:
        part += 1
      user, movie, rating, ts = ratings[i]
      year, genres = movies.get(movie, ("", []))
      # the movie column's own tokens (m<id>): one vocabulary with share_embedding
      history = [f"m{m}" for t, m in seen[user] if t < int(ts)][-HISTORY:]
      click = int(float(rating) >= 4.0)
      split = names[part]
      positives[split] += click
      sizes[split] += 1
      extra = "".join(f",{v}" for v in users[user]) if users is not None else ""
      files[split].write(
        f"{click},u{user},m{movie},{year},{genres[0] if genres else ''},{'|'.join(genres)},"
        f"{'|'.join(sorted(tags.get((user, movie), ())))},{' '.join(history)}{extra}\n"
      )
      seen[user].append((int(ts), movie))
  finally:
    for f in files.values():
      f.close()
  schemas = {k: v.format(users=", " + ", ".join(USER_COLUMNS) if users is not None else "")
             for k, v in SCHEMAS.items()}  # fmt: skip
  if users is not None:
    schemas["users"] = USERS_SCHEMA
  for name, body in schemas.items():
    with open(os.path.join(out, f"{name}.yaml"), "w") as f:
      f.write("label: click\n" + body)
  rate = {k: positives[k] / sizes[k] for k in names}
  counts = {"ratings": len(ratings), **{k: sizes[k] for k in names}, "positive_rate": rate}
  return {**counts, "skipped_rows": skipped} if skipped else counts


def main(argv=None) -> dict:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--data", required=True, help="folder with ml-latest-small's or ml-100k's files")
  p.add_argument("--out", required=True, help="where the CTR set is written")
  p.add_argument(
    "--periods", metavar="P1,P2,...",
    type=lambda v: tuple(float(x) for x in v.split(",")),
    help="cut the ratings by time into periods of these percentages (e.g. 60,20,20), written "
    "as period1.csv ... instead of train.csv / test.csv",
  )  # fmt: skip
  args = p.parse_args(argv)
  try:
    counts = build(args.data, args.out, args.periods)
  except (OSError, ValueError) as e:
    p.error(str(e))
  print(f"wrote {args.out}: {counts}")
  return counts


if __name__ == "__main__":
  main()
