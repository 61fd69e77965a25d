"""Data pipeline tests on tiny files written in the real public formats."""
import gzip
import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from jaxret import data
from jaxret.data import batches, preprocess, sources, splits
from jaxret.errors import DataError

REPO = Path(__file__).resolve().parents[1]


def write(path: Path, text: str, gz: bool = False) -> Path:
  path.parent.mkdir(parents=True, exist_ok=True)
  if gz:
    with gzip.open(path, "wt") as f:
      f.write(text)
  else:
    path.write_text(text)
  return path


ML_LINES = [  # user, item, rating, ts (unordered on purpose; user 2 has a timestamp tie)
    (2, 10, 5, 300), (1, 20, 3, 200), (1, 10, 4, 100), (2, 30, 1, 100), (2, 20, 2, 300),
    (1, 30, 5, 300), (3, 10, 4, 50),
]


def ml_text(sep="::", lines=ML_LINES):
  return "".join(sep.join(map(str, ln)) + "\n" for ln in lines)


@pytest.mark.parametrize("name,filename,text,gz", [
    ("ml-1m", "ratings.dat", ml_text(), False),
    ("ml-1m", "ratings.dat.gz", ml_text(), True),
    ("ml-1m-half", "ratings.dat.gz", ml_text(), True),
    ("ml-100k", "u.data", ml_text("\t"), False),
    ("ml-20m", "ratings.csv", "userId,movieId,rating,timestamp\n" + ml_text(","), False),
    ("amazon-beauty", "ratings_Beauty.csv", ml_text(","), False),
])
def test_timestamped_formats_read_the_same(tmp_path, name, filename, text, gz):
  write(tmp_path / name / filename, text, gz)
  seqs = data.load_sequences(name, str(tmp_path), 0, cache=False)
  assert (seqs.num_users, seqs.num_items, seqs.num_interactions) == (3, 3, 7)
  # Chronological per user, timestamp ties broken by file order (user 2: item 10 before 20).
  assert seqs.user_items(0).tolist() == [1, 2, 3]  # raw items 10, 20, 30 at ts 100, 200, 300
  assert seqs.user_items(1).tolist() == [3, 1, 2]  # 30@100, then 10@300 and 20@300 in file order
  assert seqs.user_items(2).tolist() == [1]
  assert seqs.has_timestamps


def test_order_only_formats(tmp_path):
  write(tmp_path / "amazon-beauty" / "Beauty_5core_seq.txt", "7 3 1 2\n8 1 3\n")
  write(tmp_path / "amazon-games" / "Video_sasrec.txt", "7 3\n7 1\n7 2\n8 1\n8 3\n")
  a = data.load_sequences("amazon-beauty", str(tmp_path), 0, cache=False)
  b = data.load_sequences("amazon-games", str(tmp_path), 0, cache=False)
  for seqs in (a, b):
    assert not seqs.has_timestamps
    assert seqs.user_items(0).tolist() == [3, 1, 2]
    assert seqs.user_items(1).tolist() == [1, 3]


def test_amazon_csv_string_ids(tmp_path):
  write(tmp_path / "amazon-books" / "ratings_Books.csv",
        "AXY,0001,5.0,1300000000\nBQ,0002,4.0,1200000000\nAXY,0002,3.0,1100000000\n")
  seqs = data.load_sequences("amazon-books", str(tmp_path), 0, cache=False)
  assert seqs.user_items(0).tolist() == [2, 1]  # AXY: 0002 (older) then 0001


def test_full_ml1m_sized_file(tmp_path):
  """The full-ML-1M path: a generated file with ML-1M's exact counts in its exact format."""
  rng = np.random.default_rng(0)
  users, items, n = 6040, 3706, 1_000_209
  u = np.concatenate([np.arange(1, users + 1), rng.integers(1, users + 1, n - users)])
  i = np.concatenate([np.arange(1, items + 1), rng.integers(1, items + 1, n - items)])
  u.sort()
  ts = rng.integers(956703932, 1046454590, n)
  r = rng.integers(1, 6, n)
  lines = np.char.add(np.char.add(np.char.add(np.char.add(np.char.add(np.char.add(
      u.astype(str), "::"), i.astype(str)), "::"), r.astype(str)), "::"), ts.astype(str))
  write(tmp_path / "ml-1m" / "ratings.dat", "\n".join(lines) + "\n")
  st = data.stats(data.load_sequences("ml-1m", str(tmp_path), 0, cache=False))
  assert (st["users"], st["items"], st["interactions"]) == (6040, 3706, 1_000_209)


# ----------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("text,gz,match", [
    ("", False, "no interactions"),
    ("1,2,3,4\n", False, "expected 4 fields separated by '::'.*found 1"),  # wrong delimiter
    ("1\t2\t3\t4\n", False, "expected 4 fields separated by '::'"),
    ("1::2::3::4\n1::x::3::5\n", False, r"ratings.dat:2: MovieID 'x' is not"),
    ("1::2::3::4\n-1::3::3::5\n", False, "UserID '-1' is not a non-negative"),
    ("UserID::MovieID::Rating::Timestamp\n1::2::3::4\n", False, ":1: UserID 'UserID'"),
    ("1::2::3::4\n1::3::3::\n", False, ":2: timestamp '' is not a number"),
    ("1:2:3:4\n", False, "expected 4 fields separated by '::'.*found 1"),
])
def test_bad_movielens_files(tmp_path, text, gz, match):
  write(tmp_path / "ml-1m" / "ratings.dat", text, gz)
  with pytest.raises(DataError, match=match):
    data.load_sequences("ml-1m", str(tmp_path), 0, cache=False)


def test_truncated_gzip(tmp_path):
  p = write(tmp_path / "ml-1m" / "ratings.dat.gz", ml_text() * 200, gz=True)
  p.write_bytes(p.read_bytes()[:-40])
  with pytest.raises(DataError, match="truncated or corrupted"):
    data.load_sequences("ml-1m", str(tmp_path), 0, cache=False)


def test_missing_and_unknown(tmp_path):
  with pytest.raises(DataError, match=r"not found: .*ml-1m/ratings.dat.*JAXRET_DATA_DIR"):
    data.load_sequences("ml-1m", str(tmp_path))
  with pytest.raises(DataError, match="unknown dataset 'ml-2m'; valid names: amazon-beauty"):
    data.load_sequences("ml-2m", str(tmp_path))


def test_bad_sequence_files(tmp_path):
  write(tmp_path / "amazon-games" / "Video_sasrec.txt", "1 2\n\n1 3 4\n")
  with pytest.raises(DataError, match=r"Video_sasrec.txt:3: expected 'user item'"):
    data.load_sequences("amazon-games", str(tmp_path), 0, cache=False)
  write(tmp_path / "amazon-beauty" / "Beauty_5core_seq.txt", "1 2 3\n\n2 4 b\n")
  with pytest.raises(DataError, match=r"Beauty_5core_seq.txt:3: item id 'b'"):
    data.load_sequences("amazon-beauty", str(tmp_path), 0, cache=False)


def test_kcore_that_removes_everything(tmp_path):
  write(tmp_path / "ml-1m" / "ratings.dat", ml_text())
  with pytest.raises(DataError, match="removed every interaction; lower --min_interactions"):
    data.load_sequences("ml-1m", str(tmp_path), 5, cache=False)


# ----------------------------------------------------------------------------- preprocessing


def brute_kcore(pairs, k):
  pairs = list(pairs)
  while True:
    uc, ic = {}, {}
    for u, i in pairs:
      uc[u] = uc.get(u, 0) + 1
      ic[i] = ic.get(i, 0) + 1
    kept = [(u, i) for u, i in pairs if uc[u] >= k and ic[i] >= k]
    if len(kept) == len(pairs):
      return kept
    pairs = kept


@pytest.mark.parametrize("seed,k", [(0, 2), (1, 3), (2, 5)])
def test_kcore_matches_brute_force(seed, k):
  rng = np.random.default_rng(seed)
  u = rng.integers(0, 40, 400)
  i = (rng.zipf(1.5, 400) % 60)
  keep = preprocess.kcore_mask(u, i, k, k)
  assert sorted(zip(u[keep], i[keep])) == sorted(brute_kcore(zip(u, i), k))


def test_cache_roundtrip_and_speed(tmp_path):
  write(tmp_path / "d" / "ml-1m" / "ratings.dat", ml_text())
  kw = dict(data_dir=str(tmp_path / "d"), min_user_interactions=0, cache_dir=str(tmp_path / "c"))
  a = data.load_sequences("ml-1m", **kw)
  assert len(list((tmp_path / "c").glob("ml-1m-*.npz"))) == 1
  b = data.load_sequences("ml-1m", **kw)
  for f in ("user_ptr", "items", "times", "order"):
    np.testing.assert_array_equal(getattr(a, f), getattr(b, f))
  # Another option gives another cache entry, not a stale hit.
  data.load_sequences("ml-1m", **{**kw, "min_user_interactions": 1})
  assert len(list((tmp_path / "c").glob("ml-1m-*.npz"))) == 2


# ----------------------------------------------------------------------------- splits


def synthetic_sequences(num_users=30, num_items=25, seed=0, timestamps=True):
  rng = np.random.default_rng(seed)
  rows = []
  for u in range(num_users):
    n = int(rng.integers(1, 12))
    for t in rng.integers(0, 1000, n):
      rows.append((u, int(rng.integers(1, num_items + 1)), int(t)))
  u, i, t = map(np.array, zip(*rows))
  raw = sources.RawInteractions(u, i, t if timestamps else None, "synthetic")
  return preprocess.build_sequences(raw, 0, 0)


def test_leave_one_out_split():
  seqs = synthetic_sequences()
  sp = splits.make_split(seqs, "loo")
  lengths = seqs.lengths()
  assert set(sp.valid.users) == set(np.flatnonzero(lengths >= 3))
  for u, p in zip(sp.test.users, sp.test.positions):
    assert p == lengths[u] - 1
    assert sp.train_len[u] == lengths[u] - 2  # neither target is in training
  for u, p in zip(sp.valid.users, sp.valid.positions):
    assert p == lengths[u] - 2
  short = lengths < 3
  np.testing.assert_array_equal(sp.train_len[short], lengths[short])


def test_ratio_split_is_temporal_and_leak_free():
  seqs = synthetic_sequences(num_users=60, num_items=10, seed=3)
  sp = splits.make_split(seqs, "ratio", min_history=2)
  m = seqs.num_interactions
  cut_train, cut_valid = round(0.7 * m), round(0.9 * m)
  assert sp.train_len.sum() == cut_train
  for u in range(seqs.num_users):  # training part is a chronological prefix
    order = seqs.order[seqs.user_ptr[u]:seqs.user_ptr[u + 1]]
    assert (order[:sp.train_len[u]] < cut_train).all()
    assert (order[sp.train_len[u]:] >= cut_train).all()
  for ex, lo, hi in ((sp.valid, cut_train, cut_valid), (sp.test, cut_valid, m)):
    assert len(ex) > 0
    g = seqs.user_ptr[ex.users] + ex.positions
    assert ((seqs.order[g] >= lo) & (seqs.order[g] < hi)).all()
    assert (ex.positions >= sp.train_len[ex.users]).all()
    assert (sp.train_len[ex.users] >= 2).all()


def test_ratio_first_targets_are_each_users_first_example():
  seqs = synthetic_sequences(num_users=60, num_items=10, seed=3)
  every = splits.make_split(seqs, "ratio", min_history=2)
  first = splits.make_split(seqs, "ratio", min_history=2, ratio_targets="first")
  np.testing.assert_array_equal(first.train_len, every.train_len)
  for a, f in ((every.valid, first.valid), (every.test, first.test)):
    assert len(f) == len(np.unique(a.users)) < len(a)
    assert len(np.unique(f.users)) == len(f)
    for u, p in zip(f.users, f.positions):
      assert p == a.positions[a.users == u].min()
  with pytest.raises(DataError, match="unknown ratio targets 'last'"):
    splits.make_split(seqs, "ratio", ratio_targets="last")


def test_ratio_needs_timestamps():
  seqs = synthetic_sequences(timestamps=False)
  with pytest.raises(DataError, match="needs timestamps"):
    splits.make_split(seqs, "ratio")
  with pytest.raises(DataError, match="unknown protocol 'kfold'"):
    splits.make_split(seqs, "kfold")


# ----------------------------------------------------------------------------- batches


def test_train_batches_shapes_and_content():
  seqs = synthetic_sequences()
  sp = splits.make_split(seqs, "loo")
  tb = batches.TrainBatches(seqs, sp, max_len=4, batch_size=7)
  got = list(tb.epoch(seed=0, epoch=0))
  assert len(got) == tb.steps_per_epoch
  seen = []
  for b in got:
    assert b["inputs"].shape == b["targets"].shape == b["mask"].shape == (7, 4)
    for r in range(7):
      u = b["users"][r]
      if u < 0:
        assert b["mask"][r].sum() == 0
        continue
      seen.append(u)
      prefix = seqs.user_items(u)[:sp.train_len[u]]
      window = prefix[-5:]
      n = len(window) - 1
      np.testing.assert_array_equal(b["inputs"][r, 4 - n:], window[:-1])
      np.testing.assert_array_equal(b["targets"][r, 4 - n:], window[1:])
      assert (b["inputs"][r, :4 - n] == 0).all() and b["mask"][r].sum() == n
  assert sorted(seen) == sorted(np.flatnonzero(sp.train_len >= 2))
  # Deterministic per (seed, epoch), different across epochs, resumable mid-epoch.
  again = list(tb.epoch(seed=0, epoch=0))
  np.testing.assert_array_equal(got[1]["inputs"], again[1]["inputs"])
  other = list(tb.epoch(seed=0, epoch=1))
  assert not np.array_equal(got[0]["users"], other[0]["users"])
  resumed = list(tb.epoch(seed=0, epoch=0, start_step=2))
  np.testing.assert_array_equal(resumed[0]["users"], got[2]["users"])


def test_eval_batches_exclude_the_history():
  seqs = synthetic_sequences()
  sp = splits.make_split(seqs, "loo")
  eb = batches.EvalBatches(seqs, sp.test, max_len=3, batch_size=8)
  total = 0
  for b in eb:
    assert b["inputs"].shape == (8, 3) and b["exclude"].shape[0] == 8
    for r in np.flatnonzero(b["weight"]):
      u = b["users"][r]
      items = seqs.user_items(u)
      assert b["targets"][r] == items[-1]
      hist = items[:-1]
      assert sorted(b["exclude"][r][b["exclude"][r] > 0]) == sorted(hist)
      np.testing.assert_array_equal(b["inputs"][r][-min(3, len(hist)):], hist[-3:])
      total += 1
  assert total == len(sp.test)
  kept = batches.EvalBatches(seqs, sp.test, 3, 8, exclude_history=False)
  assert all((b["exclude"] == 0).all() for b in kept)


def test_sample_negatives():
  key = jax.random.key(0)
  pos = jax.numpy.array([[1, 5], [9, 3]])
  neg = batches.sample_negatives(key, (2, 2, 500), 9, pos)
  neg = np.asarray(neg)
  assert neg.min() >= 1 and neg.max() <= 9
  assert not (neg == np.asarray(pos)[..., None]).any()
  assert set(np.unique(neg[0, 0])) == set(range(2, 10))  # uniform over all but the positive
  np.testing.assert_array_equal(neg, batches.sample_negatives(key, (2, 2, 500), 9, pos))
  plain = np.asarray(batches.sample_negatives(key, (1000,), 4))
  assert set(np.unique(plain)) == {1, 2, 3, 4}


# ----------------------------------------------------------------------------- CLI


def run_cli(*args, env=None):
  return subprocess.run([sys.executable, "-m", *args], cwd=REPO, capture_output=True,
                        text=True, env={**os.environ, **(env or {})}, timeout=120)


def test_stats_cli_and_errors(tmp_path):
  write(tmp_path / "ml-1m" / "ratings.dat", ml_text())
  out = tmp_path / "s.json"
  r = run_cli("experiments.stats", "--dataset=ml-1m", f"--data_dir={tmp_path}",
              "--min_interactions=0", f"--out={out}")
  assert r.returncode == 0, r.stderr
  assert json.loads(out.read_text())["interactions"] == 7
  for bad, match in ((["--dataset=nope"], "unknown dataset 'nope'"),
                     (["--dataset=ml-100k"], "not found"),
                     (["--min_interactions=x"], "flag --min_interactions=x")):
    r = run_cli("experiments.stats", f"--data_dir={tmp_path}", *bad)
    assert r.returncode == 2
    assert match in r.stderr and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


# ----------------------------------------------------------------------------- real data

REAL = os.environ.get(sources.DATA_DIR_ENV)
needs_real = pytest.mark.skipif(
    not REAL or not Path(REAL, "ml-100k").is_dir(),
    reason="real datasets absent: set JAXRET_DATA_DIR to a folder like ../shared/data")


@needs_real
@pytest.mark.parametrize("name,expected", [
    ("ml-1m-half", (2999, 3615, 487650)),
    ("ml-100k", (943, 1682, 100000)),
    ("amazon-beauty", (22363, 12101, 198502)),
    ("amazon-beauty-bert4rec", (40226, 54542, 353962)),
    ("amazon-games", (31013, 23715, 287107)),
])
def test_real_dataset_counts(name, expected):
  st = data.stats(data.load_sequences(name, REAL, 0))
  assert (st["users"], st["items"], st["interactions"]) == expected


def test_download_from_a_local_mirror(tmp_path, monkeypatch):
  """The download path end to end (file:// URL): fetch, md5 check, extract, then load."""
  import hashlib
  import zipfile
  archive = tmp_path / "mirror" / "ml-1m.zip"
  archive.parent.mkdir()
  with zipfile.ZipFile(archive, "w") as zf:
    zf.writestr("ml-1m/ratings.dat", ml_text())
  md5 = hashlib.md5(archive.read_bytes()).hexdigest()
  spec = sources.DATASETS["ml-1m"]
  good = sources.Download(archive.as_uri(), md5, "ml-1m/ratings.dat", "ratings.dat")
  monkeypatch.setitem(sources.DATASETS, "ml-1m", sources.DatasetSpec("ml-1m", spec.files, good))
  path = data.download("ml-1m", str(tmp_path / "data"), str(tmp_path / "cache"), progress=False)
  assert path == tmp_path / "data" / "ml-1m" / "ratings.dat"
  assert data.load_sequences("ml-1m", str(tmp_path / "data"), 0, cache=False).num_interactions == 7
  bad = sources.Download(archive.as_uri(), "0" * 32, "ml-1m/ratings.dat", "ratings.dat")
  monkeypatch.setitem(sources.DATASETS, "ml-1m", sources.DatasetSpec("ml-1m", spec.files, bad))
  with pytest.raises(DataError, match="md5 .* != expected 0000"):
    data.download("ml-1m", str(tmp_path / "data2"), str(tmp_path / "cache2"), progress=False)


def test_ml_1m_half_download_keeps_the_first_users_lines(tmp_path, monkeypatch):
  """ml-1m-half is made from the ML-1M archive: the lines with UserID <= max_user, in order;
  a different count of kept users / lines is an error and leaves no file behind."""
  import hashlib
  import zipfile
  lines = [(1, 10, 5, 100), (1, 11, 4, 101), (2, 10, 3, 102), (3, 12, 4, 103), (10, 10, 1, 104)]
  archive = tmp_path / "mirror" / "ml-1m.zip"
  archive.parent.mkdir()
  with zipfile.ZipFile(archive, "w") as zf:
    zf.writestr("ml-1m/ratings.dat", ml_text(lines=lines))
  md5 = hashlib.md5(archive.read_bytes()).hexdigest()
  spec = sources.DATASETS["ml-1m-half"]
  assert (spec.download.max_user, spec.download.expect) == (2999, (2999, 487650))

  def use(expect):
    dl = sources.Download(archive.as_uri(), md5, "ml-1m/ratings.dat", "ratings.dat",
                          max_user=2, expect=expect)
    monkeypatch.setitem(sources.DATASETS, "ml-1m-half",
                        sources.DatasetSpec("ml-1m-half", spec.files, dl))

  use((2, 3))
  path = data.download("ml-1m-half", str(tmp_path / "data"), str(tmp_path / "cache"),
                       progress=False)
  assert path.read_text() == ml_text(lines=lines[:3])
  seqs = data.load_sequences("ml-1m-half", str(tmp_path / "data"), 0, cache=False)
  assert (seqs.num_users, seqs.num_interactions) == (2, 3)
  use((2, 4))
  with pytest.raises(DataError, match="kept 2 users / 3 lines with UserID <= 2, expected 2 / 4"):
    data.download("ml-1m-half", str(tmp_path / "data2"), str(tmp_path / "cache"), progress=False)
  assert list((tmp_path / "data2" / "ml-1m-half").iterdir()) == []


@pytest.mark.parametrize("protocol", ["loo", "ratio"])
def test_no_evaluation_target_leaks_into_training(protocol):
  """Every (input, target) pair a training batch holds is an interaction of the training part:
  chronologically before every validation and test example of its user."""
  seqs = synthetic_sequences(num_users=60, num_items=10, seed=5)
  sp = splits.make_split(seqs, protocol, min_history=2)
  held_out = {(int(u), int(p)) for ex in (sp.valid, sp.test) for u, p in zip(ex.users, ex.positions)}
  tb = batches.TrainBatches(seqs, sp, max_len=50, batch_size=8)
  for b in tb.epoch(seed=0, epoch=0):
    for r in np.flatnonzero(b["users"] >= 0):
      u = int(b["users"][r])
      n_train = int(sp.train_len[u])
      used = b["targets"][r][b["mask"][r] > 0]
      # The training window is the user's first n_train items: no held-out position inside.
      assert all((u, p) not in held_out for p in range(n_train))
      np.testing.assert_array_equal(used, seqs.user_items(u)[1:n_train][-len(used):])
