"""Raw dataset files: where they live, their public formats, how to read and fetch them.

A dataset NAME is read from `DATA_DIR/NAME/`, where DATA_DIR is `--data_dir`, else the
`JAXRET_DATA_DIR` environment variable, else `./data`. Each reader returns the raw
interactions as a `RawInteractions` (one row per interaction, in file order); every
malformed input raises `DataError` with one line naming the file, the line and the fix.

Formats (each documented with its public source):
- `movielens_dat`: MovieLens-1M `ratings.dat`, `UserID::MovieID::Rating::Timestamp`,
  plain or gzip (https://files.grouplens.org/datasets/movielens/ml-1m.zip).
- `movielens_csv`: MovieLens-20M `ratings.csv`, header `userId,movieId,rating,timestamp`
  (https://files.grouplens.org/datasets/movielens/ml-20m.zip).
- `movielens_tsv`: MovieLens-100K `u.data`, `user \\t item \\t rating \\t timestamp`
  (https://files.grouplens.org/datasets/movielens/ml-100k.zip).
- `amazon_csv`: the Amazon ratings-only CSV, `user,item,rating,timestamp`, no header, string
  ids (http://snap.stanford.edu/data/amazon/productGraph/categoryFiles/ratings_<Cat>.csv).
- `pairs`: preprocessed `user item` per line, grouped by user, in time order (no timestamps;
  e.g. kang205/SASRec `data/Video.txt`).
- `user_seq`: preprocessed one line per user, `user item1 item2 ...` in time order (no
  timestamps; e.g. RUCAIBox/CIKM2020-S3Rec `data/Beauty.txt`).
Without timestamps, file order is time order.
"""
from __future__ import annotations

import contextlib
import dataclasses
import gzip
import hashlib
import io
import os
import shutil
import tempfile
import urllib.request
import zipfile
import zlib
from pathlib import Path
from typing import IO

import numpy as np
import pandas as pd

from jaxret.errors import DataError

DATA_DIR_ENV = "JAXRET_DATA_DIR"


@dataclasses.dataclass(frozen=True)
class FileSpec:
  """One accepted file of a dataset: its name inside DATA_DIR/NAME and its format."""
  filename: str
  fmt: str


@dataclasses.dataclass(frozen=True)
class Download:
  """Where a dataset's file can be fetched from (an archive member or a plain file)."""
  url: str
  md5: str | None
  member: str | None  # path inside a zip archive; None for a plain file
  filename: str  # name to write under DATA_DIR/NAME/
  # A subset of a MovieLens `UserID::...` file: keep the lines with UserID <= max_user, in
  # file order, and check that exactly `expect` = (users, lines) are kept.
  max_user: int | None = None
  expect: tuple[int, int] | None = None


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
  name: str
  files: tuple[FileSpec, ...]  # tried in order; the first that exists is read
  download: Download | None
  note: str = ""


_GROUPLENS = "https://files.grouplens.org/datasets/movielens"
_SNAP = "http://snap.stanford.edu/data/amazon/productGraph/categoryFiles"

DATASETS: dict[str, DatasetSpec] = {
    spec.name: spec for spec in [
        DatasetSpec(
            "ml-1m",
            (FileSpec("ratings.dat", "movielens_dat"),
             FileSpec("ratings.dat.gz", "movielens_dat")),
            Download(f"{_GROUPLENS}/ml-1m.zip", "c4d9eecfca2ab87c1945afe126590906",
                     "ml-1m/ratings.dat", "ratings.dat")),
        DatasetSpec(
            "ml-1m-half",
            (FileSpec("ratings.dat", "movielens_dat"),
             FileSpec("ratings.dat.gz", "movielens_dat")),
            Download(f"{_GROUPLENS}/ml-1m.zip", "c4d9eecfca2ab87c1945afe126590906",
                     "ml-1m/ratings.dat", "ratings.dat", max_user=2999, expect=(2999, 487650)),
            note="the first 2,999 users of ML-1M (edX CS100 lab subset): the lines of the full "
                 "ml-1m ratings.dat with UserID <= 2999"),
        DatasetSpec(
            "ml-20m",
            (FileSpec("ratings.csv", "movielens_csv"),
             FileSpec("ratings.csv.gz", "movielens_csv")),
            Download(f"{_GROUPLENS}/ml-20m.zip", "cd245b17a1ae2cc31bb14903e1204af3",
                     "ml-20m/ratings.csv", "ratings.csv")),
        DatasetSpec(
            "ml-100k",
            (FileSpec("u.data", "movielens_tsv"), FileSpec("u.data.gz", "movielens_tsv")),
            Download(f"{_GROUPLENS}/ml-100k.zip", "0e33842e24a9c977be4e0107933c0723",
                     "ml-100k/u.data", "u.data")),
        DatasetSpec(
            "amazon-beauty",
            (FileSpec("ratings_Beauty.csv", "amazon_csv"),
             FileSpec("Beauty_5core_seq.txt", "user_seq"),
             FileSpec("Beauty.txt", "user_seq")),
            Download(f"{_SNAP}/ratings_Beauty.csv", None, None, "ratings_Beauty.csv")),
        DatasetSpec(
            "amazon-beauty-bert4rec",
            (FileSpec("beauty_bert4rec.txt", "pairs"),),
            None,
            note="the BERT4Rec preprocessing of Amazon Beauty (FeiSun/BERT4Rec data/beauty.txt); "
                 "it lives in the amazon-beauty folder",
        ),
        DatasetSpec(
            "amazon-games",
            (FileSpec("ratings_Video_Games.csv", "amazon_csv"),
             FileSpec("Video_sasrec.txt", "pairs"),
             FileSpec("Video.txt", "pairs")),
            Download(f"{_SNAP}/ratings_Video_Games.csv", None, None, "ratings_Video_Games.csv")),
        DatasetSpec(
            "amazon-books",
            (FileSpec("ratings_Books.csv", "amazon_csv"), FileSpec("Books.txt", "pairs")),
            Download(f"{_SNAP}/ratings_Books.csv", None, None, "ratings_Books.csv")),
    ]
}
# Datasets whose files live in another dataset's folder.
_FOLDER = {"amazon-beauty-bert4rec": "amazon-beauty"}


@dataclasses.dataclass
class RawInteractions:
  """Interactions as read from a file, one row per interaction, in file order.

  users, items: (M,) raw ids (int64, or object strings for Amazon CSVs).
  timestamps: (M,) int64 unix seconds, or None when the format has none (file order is time).
  """
  users: np.ndarray
  items: np.ndarray
  timestamps: np.ndarray | None
  path: str


def default_data_dir() -> str:
  return os.environ.get(DATA_DIR_ENV) or "./data"


def get_spec(name: str) -> DatasetSpec:
  if name not in DATASETS:
    raise DataError(f"unknown dataset {name!r}; valid names: {', '.join(sorted(DATASETS))}")
  return DATASETS[name]


def dataset_folder(name: str, data_dir: str | None) -> Path:
  return Path(data_dir or default_data_dir()) / _FOLDER.get(name, name)


def find_file(name: str, data_dir: str | None) -> tuple[Path, str]:
  """Returns (path, format) of the first existing file of the dataset, or raises DataError."""
  spec = get_spec(name)
  folder = dataset_folder(name, data_dir)
  for f in spec.files:
    if (folder / f.filename).is_file():
      return folder / f.filename, f.fmt
  expected = " or ".join(str(folder / f.filename) for f in spec.files)
  if spec.download is not None:
    how = (f"download it with `python -m experiments.download --dataset={name} "
           f"--data_dir={folder.parent}` (source: {spec.download.url})")
  else:
    how = f"it has no public download ({spec.note})"
  raise DataError(
      f"dataset {name!r} not found: expected {expected}; {how}, or set --data_dir / "
      f"{DATA_DIR_ENV} to a folder that contains {folder.name}/")


# --------------------------------------------------------------------------- readers


def _open_text(path: Path) -> io.TextIOBase:
  if path.suffix == ".gz":
    return io.TextIOWrapper(gzip.open(path, "rb"), encoding="latin-1")
  return open(path, encoding="latin-1")


def _read_text(path: Path) -> str:
  try:
    with _open_text(path) as f:
      return f.read()
  except (EOFError, gzip.BadGzipFile, OSError, zipfile.BadZipFile, zlib.error) as e:
    raise DataError(f"{path}: cannot read ({type(e).__name__}: {e}); the file is truncated or "
                    f"corrupted, download it again") from None


def _first_bad(values: pd.Series, path: Path, column: str, line_offset: int = 1) -> DataError:
  """Error naming the first value of a column that is not a non-negative integer."""
  numeric = pd.to_numeric(values, errors="coerce")
  bad = numeric.isna() | (numeric < 0) | (numeric != np.floor(numeric))
  idx = int(np.flatnonzero(bad.to_numpy())[0])
  line = int(values.index[idx]) + line_offset
  if line == 1 and np.isnan(numeric.iloc[idx]):
    return DataError(f"{path}:1: {column} {values.iloc[idx]!r} is not an integer id: a header "
                     f"line? this format has none; remove that line")
  return DataError(f"{path}:{line}: {column} {values.iloc[idx]!r} is not a "
                   f"non-negative integer id; fix or remove that line")


def _to_ids(values: pd.Series, path: Path, column: str, line_offset: int = 1) -> np.ndarray:
  numeric = pd.to_numeric(values, errors="coerce")
  arr = numeric.to_numpy()
  if np.isnan(arr.astype(float)).any() or (arr < 0).any() or (arr != np.floor(arr)).any():
    raise _first_bad(values, path, column, line_offset)
  return arr.astype(np.int64)


def _split_table(text: str, path: Path, sep: str, ncols: int, layout: str,
                 header: bool = False, user_sep: str | None = None,
                 user_ncols: int | None = None) -> pd.DataFrame:
  """Parses a delimited table of exactly `ncols` fields per line, as strings; row labels are
  line indices after the header (0-based): a row's line number is its label + 1 + header.

  user_sep / user_ncols: the delimiter and field count as the user knows the format (for
  '::' files parsed on ':'), used in error messages.
  """
  user_sep, user_ncols = user_sep or sep, user_ncols or ncols
  start = 1 if header else 0
  body = text.split("\n", 1)[1] if header and "\n" in text else ("" if header else text)
  if not body.strip():
    raise DataError(f"{path}: the file has no interactions; expected lines like {layout!r}")
  # Fast path: pandas' C parser on the text.
  try:
    df = pd.read_csv(io.StringIO(text), sep=sep, header=0 if header else None, dtype=str,
                     engine="c", skip_blank_lines=True, keep_default_na=False)
  except (pd.errors.ParserError, ValueError) as e:
    df = None
    err = e
  if df is None or df.shape[1] != ncols:
    # Slow path, only to name the offending line.
    for i, ln in enumerate(text.splitlines()[start:], start=start + 1):
      if ln.strip() and len(ln.split(sep)) != ncols:
        found = len(ln.split(user_sep))
        raise DataError(
            f"{path}:{i}: expected {user_ncols} fields separated by {user_sep!r} ({layout!r}), found "
            f"{found} in {ln[:80]!r}; is it the right file and delimiter?")
    raise DataError(f"{path}: cannot parse as {layout!r}: {err}")
  num_lines = text.count("\n") + (not text.endswith("\n")) - start
  if len(df) != num_lines:  # the parser skipped blank lines: label rows by their line instead
    lines = [i for i, ln in enumerate(text.splitlines()[start:]) if ln.strip()]
    if len(lines) == len(df):
      df.index = lines
  return df


def read_movielens_dat(path: Path) -> RawInteractions:
  text = _read_text(path)
  # "a::b::c::d" split on ':' gives 7 fields with empty ones at 1, 3, 5: C-parser fast.
  layout = "UserID::MovieID::Rating::Timestamp"
  df = _split_table(text, path, ":", 7, layout, user_sep="::", user_ncols=4)
  if (df[1] != "").any() or (df[3] != "").any() or (df[5] != "").any():
    i = int(np.flatnonzero(((df[1] != "") | (df[3] != "") | (df[5] != "")).to_numpy())[0])
    raise DataError(f"{path}:{df.index[i] + 1}: expected {layout!r} with '::' delimiters; fix "
                    f"that line")
  return RawInteractions(_to_ids(df[0], path, "UserID"), _to_ids(df[2], path, "MovieID"),
                         _timestamps(df[6], path), str(path))


def read_movielens_tsv(path: Path) -> RawInteractions:
  df = _split_table(_read_text(path), path, "\t", 4, "user\\titem\\trating\\ttimestamp")
  return RawInteractions(_to_ids(df[0], path, "user id"), _to_ids(df[1], path, "item id"),
                         _timestamps(df[3], path), str(path))


def read_movielens_csv(path: Path) -> RawInteractions:
  text = _read_text(path)
  first = text.split("\n", 1)[0].strip().lower()
  if not first.startswith("userid"):
    raise DataError(f"{path}:1: expected the header 'userId,movieId,rating,timestamp', found "
                    f"{first[:80]!r}")
  df = _split_table(text, path, ",", 4, "userId,movieId,rating,timestamp", header=True)
  return RawInteractions(_to_ids(df.iloc[:, 0], path, "userId", 2),
                         _to_ids(df.iloc[:, 1], path, "movieId", 2),
                         _timestamps(df.iloc[:, 3], path, 2), str(path))


def read_amazon_csv(path: Path) -> RawInteractions:
  df = _split_table(_read_text(path), path, ",", 4, "user,item,rating,timestamp")
  if not df[3].iloc[0].strip().lstrip("-").isdigit():
    raise DataError(f"{path}:1: expected 'user,item,rating,timestamp' without a header, found "
                    f"{','.join(df.iloc[0])!r}; remove the header line")
  users, items = df[0].to_numpy(dtype=object), df[1].to_numpy(dtype=object)
  for col, arr in (("user", users), ("item", items)):
    empty = np.flatnonzero(pd.Series(arr).str.strip() == "")
    if empty.size:
      raise DataError(f"{path}:{df.index[empty[0]] + 1}: empty {col} id; fix or remove that "
                      f"line")
  return RawInteractions(users, items, _timestamps(df[3], path), str(path))


def read_pairs(path: Path) -> RawInteractions:
  text = _read_text(path)
  rows = [ln.split() for ln in text.splitlines()]
  nonempty = [(i, r) for i, r in enumerate(rows, start=1) if r]
  if not nonempty:
    raise DataError(f"{path}: the file has no interactions; expected lines like 'user item'")
  for i, r in nonempty:
    if len(r) != 2:
      raise DataError(f"{path}:{i}: expected 'user item' (2 whitespace-separated fields), found "
                      f"{len(r)}; is it a one-line-per-user file (use that dataset's other name)?")
  users = pd.Series([r[0] for _, r in nonempty])
  items = pd.Series([r[1] for _, r in nonempty])
  lines = np.array([i for i, _ in nonempty])
  try:
    return RawInteractions(_to_ids(users, path, "user id"), _to_ids(items, path, "item id"),
                           None, str(path))
  except DataError as e:  # report the real line number (blank lines were skipped)
    raise _renumber(e, path, lines) from None


def read_user_seq(path: Path) -> RawInteractions:
  text = _read_text(path)
  users, items, lines = [], [], []
  for i, ln in enumerate(text.splitlines(), start=1):
    parts = ln.split()
    if not parts:
      continue
    if len(parts) < 2:
      raise DataError(f"{path}:{i}: expected 'user item1 item2 ...', found only {parts[0]!r}")
    users.extend([parts[0]] * (len(parts) - 1))
    items.extend(parts[1:])
    lines.extend([i] * (len(parts) - 1))
  if not users:
    raise DataError(f"{path}: the file has no interactions; expected 'user item1 item2 ...'")
  lines = np.array(lines)
  try:
    return RawInteractions(_to_ids(pd.Series(users), path, "user id"),
                           _to_ids(pd.Series(items), path, "item id"), None, str(path))
  except DataError as e:
    raise _renumber(e, path, lines) from None


def _renumber(err: DataError, path: Path, lines: np.ndarray) -> DataError:
  msg = str(err)
  prefix = f"{path}:"
  head, _, rest = msg[len(prefix):].partition(":")
  return DataError(f"{prefix}{lines[int(head) - 1]}:{rest}")


def _timestamps(values: pd.Series, path: Path, line_offset: int = 1) -> np.ndarray:
  numeric = pd.to_numeric(values, errors="coerce")
  if numeric.isna().any():
    idx = int(np.flatnonzero(numeric.isna().to_numpy())[0])
    line = int(values.index[idx]) + line_offset
    raise DataError(f"{path}:{line}: timestamp {values.iloc[idx]!r} is not a number; fix or "
                    f"remove that line")
  return numeric.to_numpy().astype(np.int64)


READERS = {
    "movielens_dat": read_movielens_dat,
    "movielens_tsv": read_movielens_tsv,
    "movielens_csv": read_movielens_csv,
    "amazon_csv": read_amazon_csv,
    "pairs": read_pairs,
    "user_seq": read_user_seq,
}


def read_raw(name: str, data_dir: str | None) -> RawInteractions:
  """Reads dataset `name` from `data_dir/name/` (see the module docstring)."""
  path, fmt = find_file(name, data_dir)
  try:
    return READERS[fmt](path)
  except DataError as e:
    raise _with_truncation_hint(e, path) from None


def _with_truncation_hint(err: DataError, path: Path) -> DataError:
  """A bad last line with no line end is most likely a cut-off copy: say so."""
  line, sep, _ = str(err)[len(f"{path}:"):].partition(":")
  if not str(err).startswith(f"{path}:") or not sep or not line.isdigit():
    return err
  text = _read_text(path)
  if text.endswith("\n") or int(line) != text.count("\n") + 1:
    return err
  return DataError(f"{err}; that last line has no line end: if the file is truncated, download "
                   f"or copy it again")


# --------------------------------------------------------------------------- download


def md5sum(path: Path, chunk: int = 1 << 20) -> str:
  h = hashlib.md5()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(chunk), b""):
      h.update(block)
  return h.hexdigest()


def download(name: str, data_dir: str | None = None, cache_dir: str | None = None,
             progress: bool = True) -> Path:
  """Fetches dataset `name` from its official URL into DATA_DIR/NAME/ and returns the path.

  The archive is cached in `cache_dir` (default `~/.cache/jaxret/downloads`), verified
  against its md5 where one is published, and the ratings file extracted atomically (for a
  user subset such as ml-1m-half: only the lines of its users, count-checked).
  """
  from tqdm.auto import tqdm

  spec = get_spec(name)
  if spec.download is None:
    raise DataError(f"dataset {name!r} has no public download ({spec.note}); put the file in "
                    f"{dataset_folder(name, data_dir)}/")
  dl = spec.download
  cache = Path(cache_dir or Path.home() / ".cache" / "jaxret" / "downloads")
  cache.mkdir(parents=True, exist_ok=True)
  archive = cache / dl.url.rsplit("/", 1)[1]
  if not archive.exists() or (dl.md5 and md5sum(archive) != dl.md5):
    tmp = archive.with_suffix(archive.suffix + ".part")
    try:
      with urllib.request.urlopen(dl.url, timeout=60) as resp, open(tmp, "wb") as out:
        total = int(resp.headers.get("Content-Length") or 0) or None
        with tqdm(total=total, unit="B", unit_scale=True, desc=f"download {name}",
                  disable=not progress) as bar:
          for block in iter(lambda: resp.read(1 << 20), b""):
            out.write(block)
            bar.update(len(block))
    except OSError as e:
      raise DataError(f"cannot download {dl.url} ({e}); without internet, fetch it elsewhere "
                      f"and put it in {dataset_folder(name, data_dir)}/") from None
    os.replace(tmp, archive)
  if dl.md5 and md5sum(archive) != dl.md5:
    raise DataError(f"{archive}: md5 {md5sum(archive)} != expected {dl.md5}; delete it and "
                    f"download again")
  folder = dataset_folder(name, data_dir)
  folder.mkdir(parents=True, exist_ok=True)
  target = folder / dl.filename
  with tempfile.NamedTemporaryFile(dir=folder, delete=False) as tmp_out:
    try:
      with contextlib.ExitStack() as stack:
        if dl.member is None:
          src = stack.enter_context(open(archive, "rb"))
        else:
          zf = stack.enter_context(zipfile.ZipFile(archive))
          src = stack.enter_context(zf.open(dl.member))
        if dl.max_user is None:
          shutil.copyfileobj(src, tmp_out)
        else:
          _copy_users(src, tmp_out, dl, archive)
    except BaseException:
      os.unlink(tmp_out.name)
      raise
  os.replace(tmp_out.name, target)
  return target


def _copy_users(src: IO[bytes], out: IO[bytes], dl: Download, archive: Path) -> None:
  """Copies the lines of `UserID::...` text with UserID <= dl.max_user; checks dl.expect."""
  users, lines = set(), 0
  for line in src:
    user = int(line.split(b"::", 1)[0])
    if user <= dl.max_user:
      out.write(line)
      users.add(user)
      lines += 1
  if dl.expect is not None and (len(users), lines) != dl.expect:
    raise DataError(f"{archive}:{dl.member}: kept {len(users):,} users / {lines:,} lines with "
                    f"UserID <= {dl.max_user}, expected {dl.expect[0]:,} / {dl.expect[1]:,}; "
                    f"delete it and download again")
