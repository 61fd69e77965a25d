"""Bad input: every malformed file, flag or config value a user really hits.

Each case fails with exit status 2 and exactly one `error: ...` line on stderr naming the
problem and the fix, with no traceback and the workdir of a previous run byte-for-byte
untouched; or, where the input is legal but unusual (unordered timestamps, duplicate rows,
one-interaction users), is handled as documented. CLI cases run `experiments/run.py`
in-process through `cli.run_main` (a subprocess costs seconds of jax import); three real
subprocess cases show that the harness gives the same output. Every case records
`category` and `case` properties for the junit report of `scripts/robustness_report.py`.
"""
import contextlib
import dataclasses
import gzip
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Callable

import pytest

from jaxret import data as data_lib
from jaxret import train
from jaxret.errors import ConfigError
from train_test import REPO, tiny_config, write_tiny_ml

# ml_collections loads the --config file with the deprecated load_module, once per CLI case.
pytestmark = pytest.mark.filterwarnings("ignore:the load_module:DeprecationWarning")

CONFIG_FILE = REPO / "experiments" / "configs" / "default.py"
# A small dot-head run of the tiny ML-1M file: fast to reject, valid unless a case breaks it.
BASE_ARGS = ["--dataset=ml-1m", "--head=dot", "--min_interactions=0", "--epochs=1",
             "--config.max_len=8", "--config.sasrec.dim=16", "--config.num_negatives=8",
             "--config.train.batch_size=16", "--config.eval.batch_size=16",
             "--config.eval.patience=0"]
DEFAULT_KS = "--config.eval.ks=(1,5,10)"  # the tiny catalog has 30 items


@pytest.fixture(scope="module")
def tiny_text(tmp_path_factory) -> str:
  folder = write_tiny_ml(tmp_path_factory.mktemp("tiny"))
  return (folder / "ml-1m" / "ratings.dat").read_text()


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
  monkeypatch.setenv(data_lib.CACHE_ENV, str(tmp_path / "cache"))


def bad_input(record_property, case: str) -> None:
  record_property("category", "bad_input")
  record_property("case", case)


# ----------------------------------------------------------------------------- the harness


def previous_run(workdir: Path) -> dict[str, bytes]:
  """Fills `workdir` with a previous run's files; returns its snapshot."""
  (workdir / "checkpoints" / "latest" / "3").mkdir(parents=True)
  (workdir / "config.json").write_text('{"dataset": "ml-1m", "head": "dot"}\n')
  (workdir / "metrics.jsonl").write_text('{"step": 3, "epoch": 1, "split": "train"}\n')
  (workdir / "checkpoints" / "latest" / "3" / "meta.json").write_text('{"epoch": 1}')
  (workdir / "sentinel.bin").write_bytes(bytes(range(256)))
  return snapshot(workdir)


def snapshot(workdir: Path) -> dict[str, bytes]:
  """Every path under `workdir` -> its bytes (b'<dir>' for folders)."""
  return {str(p.relative_to(workdir)): b"<dir>" if p.is_dir() else p.read_bytes()
          for p in sorted(workdir.rglob("*"))}


@dataclasses.dataclass
class Outcome:
  code: int | None
  stdout: str
  stderr: str


def run_in_process(args: list[str], capfd, monkeypatch) -> Outcome:
  """`python -m experiments.run ARGS` in this process, through the same `cli.run_main`."""
  from absl import flags
  from experiments import cli, run

  flags.FLAGS.unparse_flags()
  for name in [n for n in flags.FLAGS if n.startswith("config.")]:
    delattr(flags.FLAGS, name)  # the --config flag defines these per command line
  # An explicit --config makes config_flags reload the file and read the overrides from
  # sys.argv now, as a fresh process does at import.
  argv = ["experiments/run.py", f"--config={CONFIG_FILE}", *args]
  monkeypatch.setattr(sys, "argv", argv)
  capfd.readouterr()
  with pytest.raises(SystemExit) as exit_info:
    cli.run_main(run.main)
  out, err = capfd.readouterr()
  return Outcome(exit_info.value.code, out, err)


def run_subprocess(args: list[str]) -> Outcome:
  # The environment keeps conftest's 8 simulated devices, so messages match in-process ones.
  r = subprocess.run([sys.executable, "-m", "experiments.run", *args], cwd=REPO,
                     capture_output=True, text=True, timeout=120, env=dict(os.environ))
  return Outcome(r.returncode, r.stdout, r.stderr)


def assert_one_line_error(outcome: Outcome, *fragments: str) -> str:
  assert "Traceback" not in outcome.stdout + outcome.stderr, outcome.stderr[-3000:]
  assert outcome.code == 2, (outcome.code, outcome.stderr[-2000:])
  lines = outcome.stderr.splitlines()
  assert len(lines) == 1 and lines[0].startswith("error: ") and lines[0][7:].strip(), lines
  for fragment in fragments:
    assert fragment in lines[0], (fragment, lines[0])
  return lines[0]


# ----------------------------------------------------------------------------- bad data files


def _cut_after_item(text: str, line: int = 337) -> bytes:
  """A copy cut off after the item id of `line` (the rest of the file is gone)."""
  lines = text.splitlines(keepends=True)
  user, item, *_ = lines[line - 1].split("::")
  return ("".join(lines[:line - 1]) + f"{user}::{item}").encode()


def _corrupt_gzip(text: str) -> bytes:
  packed = bytearray(gzip.compress(text.encode()))
  middle = len(packed) // 2
  packed[middle:middle + 8] = bytes(b ^ 0xFF for b in packed[middle:middle + 8])
  return bytes(packed)


def _replace_line(text: str, line: int, new: str) -> bytes:
  lines = text.splitlines()
  lines[line - 1] = new
  return ("\n".join(lines) + "\n").encode()


@dataclasses.dataclass
class FileCase:
  id: str
  case: str  # what the user did, for the report
  filename: str | None  # under DATA/<dataset>/; None: no file at all
  content: Callable[[str], bytes]  # tiny ML-1M text -> the file's bytes
  fragments: tuple[str, ...]  # the problem and the fix, each must be in the error line
  dataset: str = "ml-1m"
  extra_args: tuple[str, ...] = ()


FILE_CASES = [
    FileCase("missing_data_file", "data file missing", None, lambda t: b"",
             ("dataset 'ml-1m' not found", "ratings.dat", "experiments.download", "--data_dir")),
    FileCase("empty_file", "empty ratings.dat", "ratings.dat", lambda t: b"",
             ("ratings.dat: the file has no interactions", "UserID::MovieID::Rating::Timestamp")),
    FileCase("blank_lines_only", "ratings.dat with only blank lines", "ratings.dat",
             lambda t: b"\n\n\n", ("the file has no interactions",)),
    FileCase("truncated_file", "ratings.dat cut off in the middle of a line", "ratings.dat",
             _cut_after_item, (":337: timestamp '' is not a number", "no line end",
                             "download or copy it again")),
    FileCase("truncated_gzip", "ratings.dat.gz cut off (incomplete gzip stream)",
             "ratings.dat.gz", lambda t: gzip.compress(t.encode())[:-200],
             ("ratings.dat.gz: cannot read", "truncated or corrupted", "download it again")),
    FileCase("corrupted_gzip", "ratings.dat.gz with corrupted bytes in the middle",
             "ratings.dat.gz", _corrupt_gzip,
             ("ratings.dat.gz: cannot read", "truncated or corrupted", "download it again")),
    FileCase("plain_text_named_gz", "an uncompressed file named ratings.dat.gz",
             "ratings.dat.gz", lambda t: t.encode(), ("Not a gzipped file", "download it again")),
    FileCase("commas_in_ml1m", "commas instead of '::' in ratings.dat", "ratings.dat",
             lambda t: t.replace("::", ",").encode(),
             (":1: expected 4 fields separated by '::'", "found 1", "right file and delimiter")),
    FileCase("tabs_in_ml1m", "tabs instead of '::' in ratings.dat", "ratings.dat",
             lambda t: t.replace("::", "\t").encode(),
             (":1: expected 4 fields separated by '::'", "right file and delimiter")),
    FileCase("single_colons_in_ml1m", "':' instead of '::' in ratings.dat", "ratings.dat",
             lambda t: t.replace("::", ":").encode(),
             ("expected 4 fields separated by '::'", "right file and delimiter")),
    FileCase("colons_in_ml100k", "'::' instead of tabs in ml-100k u.data", "u.data",
             lambda t: t.encode(), ("u.data:1: expected 4 fields separated by '\\t'",),
             dataset="ml-100k"),
    FileCase("header_in_ml1m", "a header line in ratings.dat (the format has none)",
             "ratings.dat", lambda t: ("UserID::MovieID::Rating::Timestamp\n" + t).encode(),
             (":1: UserID 'UserID' is not an integer id", "header line", "remove that line")),
    FileCase("header_in_amazon_csv", "a header line in an Amazon ratings CSV",
             "ratings_Books.csv", lambda t: ("user,item,rating,timestamp\n"
                                             + t.replace("::", ",")).encode(),
             ("ratings_Books.csv:1", "without a header", "remove the header line"),
             dataset="amazon-books"),
    FileCase("no_header_in_ml20m", "ml-20m ratings.csv without its header line", "ratings.csv",
             lambda t: t.replace("::", ",").encode(),
             ("ratings.csv:1: expected the header 'userId,movieId,rating,timestamp'",),
             dataset="ml-20m"),
    FileCase("non_integer_item_id", "a non-integer MovieID", "ratings.dat",
             lambda t: _replace_line(t, 5, "1::abc::4::1040"),
             (":5: MovieID 'abc' is not a non-negative integer id", "fix or remove that line")),
    FileCase("fractional_user_id", "a fractional UserID", "ratings.dat",
             lambda t: _replace_line(t, 7, "1.5::3::4::1060"),
             (":7: UserID '1.5' is not a non-negative integer id", "fix or remove that line")),
    FileCase("negative_user_id", "a negative UserID", "ratings.dat",
             lambda t: _replace_line(t, 9, "-4::3::4::1080"),
             (":9: UserID '-4' is not a non-negative integer id", "fix or remove that line")),
    FileCase("bad_line_after_blank_lines", "a bad line after blank lines (its real line named)",
             "ratings.dat", lambda t: _replace_line(t, 9, "\n\n-4::3::4::1080"),
             (":11: UserID '-4' is not a non-negative integer id",)),
    FileCase("missing_timestamp_field", "a line without its timestamp field", "ratings.dat",
             lambda t: _replace_line(t, 3, "1::3::4"),
             (":3: timestamp '' is not a number", "fix or remove that line")),
    FileCase("empty_timestamp", "a line with an empty timestamp", "ratings.dat",
             lambda t: _replace_line(t, 3, "1::3::4::"),
             (":3: timestamp '' is not a number", "fix or remove that line")),
    FileCase("text_timestamp", "a timestamp that is not a number", "ratings.dat",
             lambda t: _replace_line(t, 3, "1::3::4::yesterday"),
             (":3: timestamp 'yesterday' is not a number", "fix or remove that line")),
    FileCase("kcore_removes_everything", "a k-core threshold larger than every user",
             "ratings.dat", lambda t: t.encode(),
             ("removed every interaction", "lower --min_interactions"),
             extra_args=("--min_interactions=100",)),
    FileCase("one_interaction_only_loo", "every user has one interaction (loo)", "ratings.dat",
             lambda t: b"1::10::4::100\n2::11::4::100\n",
             ("no user has the 3 interactions leave-one-out needs",)),
    FileCase("one_interaction_only_ratio", "every user has one interaction (ratio)",
             "ratings.dat", lambda t: b"1::10::4::100\n2::11::4::100\n",
             ("the temporal split left 0 validation and 0 test examples", "use more data"),
             extra_args=("--protocol=ratio",)),
]


@pytest.mark.parametrize("c", FILE_CASES, ids=[c.id for c in FILE_CASES])
def test_bad_data_file(c: FileCase, tiny_text, tmp_path, capfd, monkeypatch, record_property):
  bad_input(record_property, c.case)
  data_dir = tmp_path / "data"
  (data_dir / c.dataset).mkdir(parents=True)
  if c.filename is not None:
    (data_dir / c.dataset / c.filename).write_bytes(c.content(tiny_text))
  workdir = tmp_path / "workdir"
  workdir.mkdir()
  before = previous_run(workdir)
  args = [*BASE_ARGS, DEFAULT_KS, f"--data_dir={data_dir}", f"--workdir={workdir}",
          f"--dataset={c.dataset}", *c.extra_args]
  assert_one_line_error(run_in_process(args, capfd, monkeypatch), *c.fragments)
  assert snapshot(workdir) == before


# ----------------------------------------------------------------------------- bad flags


@dataclasses.dataclass
class FlagCase:
  id: str
  case: str
  args: tuple[str, ...]
  fragments: tuple[str, ...]


FLAG_CASES = [
    FlagCase("unknown_dataset", "unknown dataset name", ("--dataset=ml-2m",),
             ("unknown dataset 'ml-2m'", "valid names: amazon-beauty")),
    FlagCase("unknown_encoder", "unknown encoder name", ("--encoder=gru4rec",),
             ("unknown encoder 'gru4rec'", "valid names: sasrec, svd")),
    FlagCase("unknown_head", "unknown head name", ("--head=cosine",),
             ("unknown head 'cosine'", "valid names: dot, fm, mlp, mol, neural_fm")),
    FlagCase("unknown_loss", "unknown loss name", ("--loss=hinge",),
             ("unknown loss 'hinge'", "valid names: bce, softmax, ss")),
    FlagCase("unknown_protocol", "unknown protocol name", ("--protocol=kfold",),
             ("unknown protocol 'kfold'", "valid names: loo, ratio")),
    FlagCase("unknown_flag", "a misspelt flag", ("--heads=mol",),
             ("Unknown command line flag 'heads'", "Did you mean: head", "--helpshort")),
    FlagCase("unknown_config_field", "a misspelt config field",
             ("--config.train.bach_size=16",),
             ("unknown config field 'bach_size'", 'Did you mean "batch_size"')),
    FlagCase("batch_size_not_number", "a batch size that is not a number (abc)",
             ("--config.train.batch_size=abc",),
             ("flag --config.train.batch_size=abc", "invalid literal for int()")),
    FlagCase("batch_size_fraction", "a fractional batch size (16.5)",
             ("--config.train.batch_size=16.5",), ("flag --config.train.batch_size=16.5",)),
    FlagCase("learning_rate_list", "a list as the learning rate ([1])",
             ("--config.train.learning_rate=[1]",),
             ("flag --config.train.learning_rate=[1]", "could not convert string to float")),
    FlagCase("epochs_not_number", "epochs that are not a number (abc)", ("--epochs=abc",),
             ("flag --epochs=abc", "invalid literal for int()")),
    FlagCase("batch_size_zero", "a zero batch size", ("--config.train.batch_size=0",),
             ("--config.train.batch_size must be a positive integer, got 0",)),
    FlagCase("batch_size_negative", "a negative batch size (-8)",
             ("--config.train.batch_size=-8",),
             ("--config.train.batch_size must be a positive integer, got -8",)),
    FlagCase("eval_batch_size_zero", "a zero eval batch size",
             ("--config.eval.batch_size=0",),
             ("--config.eval.batch_size must be a positive integer, got 0",)),
    FlagCase("epochs_zero", "zero epochs", ("--epochs=0",),
             ("--epochs (--config.train.epochs) must be a positive integer, got 0",
              "experiments.evaluate")),
    FlagCase("epochs_negative", "negative epochs (-3)", ("--epochs=-3",),
             ("--epochs (--config.train.epochs) must be a positive integer, got -3",)),
    FlagCase("eval_every_zero", "evaluation every 0 epochs",
             ("--config.eval.every_epochs=0",),
             ("--config.eval.every_epochs must be a positive integer, got 0",)),
    FlagCase("batch_size_not_divisible", "a batch size not divisible by the 8 devices",
             ("--config.train.batch_size=12",),
             ("--config.train.batch_size 12 is not divisible by the 8 devices",
              "use a multiple of 8")),
    FlagCase("eval_batch_size_not_divisible", "an eval batch size not divisible by the devices",
             ("--config.eval.batch_size=20",),
             ("--config.eval.batch_size 20 is not divisible by the 8 devices",
              "use a multiple of 8")),
    FlagCase("ks_larger_than_catalog", "every cutoff k larger than the 30-item catalog",
             ("--config.eval.ks=(50,100)", "--config.eval.metric=mrr"),
             ("every cutoff in --config.eval.ks=(50, 100) is larger than the 30 items",
              "use cutoffs <= 30")),
    FlagCase("metric_k_larger_than_catalog", "the validation metric's k larger than the catalog",
             ("--config.eval.ks=(1,5,40)", "--config.eval.metric=ndcg@40"),
             ("--config.eval.metric=ndcg@40 needs a cutoff <= the 30 items", "ndcg@5")),
    FlagCase("metric_k_not_in_ks", "a validation metric whose k is not in --config.eval.ks",
             ("--config.eval.ks=(1,5)",),
             ("--config.eval.metric=ndcg@10 needs the cutoff 10 in --config.eval.ks=(1, 5)",
              "add it or pick another metric")),
    FlagCase("unknown_metric", "an unknown validation metric", ("--config.eval.metric=auc",),
             ("unknown --config.eval.metric 'auc'", "e.g. ndcg@10")),
    FlagCase("ks_not_numbers", "cutoffs k that are not numbers (abc)", ("--config.eval.ks=abc",),
             ("--config.eval.ks must be positive integer cutoffs", "('abc',)")),
    FlagCase("ks_zero", "a zero cutoff in --config.eval.ks", ("--config.eval.ks=(0,5)",),
             ("--config.eval.ks must be positive integer cutoffs", "(0, 5)")),
]


@pytest.mark.parametrize("c", FLAG_CASES, ids=[c.id for c in FLAG_CASES])
def test_bad_flag(c: FlagCase, tiny_text, tmp_path, capfd, monkeypatch, record_property):
  bad_input(record_property, c.case)
  data_dir = tmp_path / "data"
  (data_dir / "ml-1m").mkdir(parents=True)
  (data_dir / "ml-1m" / "ratings.dat").write_text(tiny_text)
  workdir = tmp_path / "workdir"
  workdir.mkdir()
  before = previous_run(workdir)
  ks = [] if any(a.startswith("--config.eval.ks") for a in c.args) else [DEFAULT_KS]
  args = [*BASE_ARGS, *ks, f"--data_dir={data_dir}", f"--workdir={workdir}", *c.args]
  assert_one_line_error(run_in_process(args, capfd, monkeypatch), *c.fragments)
  assert snapshot(workdir) == before


# ----------------------------------------------------------------------------- bad workdirs


@contextlib.contextmanager
def read_only(folder: Path):
  """Makes `folder` refuse new entries: by its mode, and for root (who ignores modes) with
  `chattr +i`; skips where neither works."""
  folder.chmod(0o555)
  immutable = os.geteuid() == 0 and subprocess.run(
      ["chattr", "+i", str(folder)], capture_output=True).returncode == 0
  try:
    try:
      (folder / ".probe").write_text("")
    except OSError:
      pass
    else:
      (folder / ".probe").unlink()
      pytest.skip("cannot make a read-only folder here")
    yield
  finally:
    if immutable:
      subprocess.run(["chattr", "-i", str(folder)], check=True)
    folder.chmod(0o755)


def test_workdir_not_writable(tiny_text, tmp_path, capfd, monkeypatch, record_property):
  bad_input(record_property, "a workdir that is not writable")
  data_dir = tmp_path / "data"
  (data_dir / "ml-1m").mkdir(parents=True)
  (data_dir / "ml-1m" / "ratings.dat").write_text(tiny_text)
  workdir = tmp_path / "workdir"
  workdir.mkdir()
  before = previous_run(workdir)
  args = [*BASE_ARGS, DEFAULT_KS, f"--data_dir={data_dir}", f"--workdir={workdir}"]
  with read_only(workdir):
    outcome = run_in_process(args, capfd, monkeypatch)
  assert_one_line_error(outcome, f"workdir {workdir} is not writable", "pass another --workdir")
  assert snapshot(workdir) == before


def test_workdir_is_a_file(tiny_text, tmp_path, capfd, monkeypatch, record_property):
  bad_input(record_property, "a workdir that is an existing file")
  data_dir = tmp_path / "data"
  (data_dir / "ml-1m").mkdir(parents=True)
  (data_dir / "ml-1m" / "ratings.dat").write_text(tiny_text)
  workdir = tmp_path / "workdir"
  workdir.mkdir()
  before = previous_run(workdir)
  args = [*BASE_ARGS, DEFAULT_KS, f"--data_dir={data_dir}",
          f"--workdir={workdir / 'sentinel.bin'}"]
  assert_one_line_error(run_in_process(args, capfd, monkeypatch),
                        "sentinel.bin is a file, not a folder", "pass another --workdir")
  assert snapshot(workdir) == before


# ----------------------------------------------------------------------------- real processes


SUBPROCESS_CASES = {  # id -> (case, args, data file present)
    "unknown_config_field": ("a misspelt config field, read at import",
                             ["--config.train.bach_size=16"], True),
    "missing_data_file": ("data file missing", [], False),
    "ks_larger_than_catalog": ("every cutoff k larger than the catalog",
                               ["--config.eval.ks=(50,100)", "--config.eval.metric=mrr"], True),
}


@pytest.mark.parametrize("case_id", list(SUBPROCESS_CASES))
def test_real_process_matches_in_process(case_id, tiny_text, tmp_path, capfd, monkeypatch,
                                         record_property):
  case, extra, with_data = SUBPROCESS_CASES[case_id]
  bad_input(record_property, f"{case} (real process; the in-process output is identical)")
  data_dir = tmp_path / "data"
  (data_dir / "ml-1m").mkdir(parents=True)
  if with_data:
    (data_dir / "ml-1m" / "ratings.dat").write_text(tiny_text)
  workdir = tmp_path / "workdir"
  workdir.mkdir()
  before = previous_run(workdir)
  ks = [] if any(a.startswith("--config.eval.ks") for a in extra) else [DEFAULT_KS]
  args = [*BASE_ARGS, *ks, f"--data_dir={data_dir}", f"--workdir={workdir}", *extra]
  real = run_subprocess(args)
  line = assert_one_line_error(real)
  assert snapshot(workdir) == before
  in_process = run_in_process(args, capfd, monkeypatch)
  assert (in_process.code, in_process.stderr) == (real.code, real.stderr), line
  assert snapshot(workdir) == before


# ----------------------------------------------------------------------------- legal but unusual


def load(tmp_path: Path, text: str, min_interactions: int = 0) -> data_lib.Sequences:
  path = tmp_path / "data" / "ml-1m" / "ratings.dat"
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text(text)
  return data_lib.load_sequences("ml-1m", str(tmp_path / "data"), min_interactions, cache=False)


def test_timestamps_out_of_order_are_sorted(tmp_path, record_property):
  bad_input(record_property, "timestamps out of order in the file (sorted, ties in file order)")
  seqs = load(tmp_path, "1::30::4::300\n2::10::4::50\n1::10::4::100\n1::40::4::300\n"
                        "1::20::4::200\n2::20::4::20\n")
  assert seqs.user_items(0).tolist() == [1, 2, 3, 4]  # raw 10@100, 20@200, 30@300, 40@300
  assert seqs.user_items(1).tolist() == [2, 1]  # raw 20@20, then 10@50
  for u in range(seqs.num_users):
    span = slice(seqs.user_ptr[u], seqs.user_ptr[u + 1])
    assert (sorted(seqs.times[span].tolist()) == seqs.times[span].tolist())
  first_two = sorted(range(6), key=lambda i: seqs.order[i])[:2]  # global order: 2's two first
  assert seqs.times[first_two].tolist() == [20, 50]
  split = data_lib.make_split(seqs, "loo")
  assert split.test.positions.tolist() == [3]  # raw 40@300, the last in time and file


def test_duplicate_rows_are_kept_once(tmp_path, record_property):
  bad_input(record_property, "duplicate rows (an exact duplicate is kept once)")
  seqs = load(tmp_path, "1::10::4::100\n1::20::4::200\n1::20::4::200\n1::30::4::300\n"
                        "1::20::5::400\n2::10::4::100\n2::10::4::100\n")
  assert seqs.user_items(0).tolist() == [1, 2, 3, 2]  # 20@200 once; 20@400 is a re-watch
  assert seqs.user_items(1).tolist() == [1]
  # Before the k-core filter: user 2 has one interaction, not two.
  load(tmp_path, "1::10::4::100\n1::20::4::200\n2::10::4::100\n2::10::4::100\n")
  kept = data_lib.load_sequences("ml-1m", str(tmp_path / "data"), min_user_interactions=2,
                                 min_item_interactions=0, cache=False)
  assert kept.num_users == 1


def test_repeats_without_timestamps_are_kept(tmp_path, record_property):
  bad_input(record_property, "repeated (user, item) rows in a file without timestamps (kept)")
  path = tmp_path / "amazon-games" / "Video_sasrec.txt"
  path.parent.mkdir()
  path.write_text("7 3\n7 1\n7 1\n8 1\n")  # without a timestamp a repeat is a re-purchase
  seqs = data_lib.load_sequences("amazon-games", str(tmp_path), 0, cache=False)
  assert seqs.user_items(0).tolist() == [2, 1, 1]


# Six users who each watch items 1..8 in a rotated order, and user 9 with one interaction.
ONE_INTERACTION = "".join(f"{u}::{(u + t) % 8 + 1}::4::{100 + t}\n" for u in range(1, 7)
                          for t in range(8)) + "9::1::4::50\n"


@pytest.mark.parametrize("protocol", ["loo", "ratio"])
def test_user_with_one_interaction_is_skipped_with_a_message(protocol, tmp_path,
                                                             record_property):
  bad_input(record_property, f"a user with one interaction ({protocol}: skipped, with a note)")
  seqs = load(tmp_path, ONE_INTERACTION)
  split = data_lib.make_split(seqs, protocol, min_history=1)
  lonely = seqs.num_users - 1  # raw user 9
  assert lonely not in split.valid.users and lonely not in split.test.users
  batches = data_lib.TrainBatches(seqs, split, 8, 8)
  assert lonely not in batches.users
  notes = data_lib.skipped_users(seqs, split)
  assert notes[0] == "1 of 7 users have < 2 training interactions and give no training sequence"
  if protocol == "loo":
    assert notes[1] == ("1 of 7 users have < 3 interactions and are not evaluated (loo needs a "
                        "training, a validation and a test item; --min_interactions=3 drops "
                        "them)")
    # Everyone else is evaluated on their last two items.
    assert sorted(split.test.users.tolist()) == list(range(lonely))


def test_cutoffs_larger_than_the_catalog_are_skipped(tmp_path, record_property):
  bad_input(record_property, "some cutoffs k larger than the catalog (skipped, with a note)")
  config = tiny_config(tmp_path, **{"eval.ks": (1, 10, 50, 200)})
  assert train.eval_cutoffs(config, 30) == (1, 10)
  config.eval.ks = (100, 200)
  with pytest.raises(ConfigError, match="every cutoff"):
    train.eval_cutoffs(config, 30)


# ----------------------------------------------------------------------------- the README


def test_readme_section_matches_the_results_file():
  spec = importlib.util.spec_from_file_location(
      "robustness_report", REPO / "scripts" / "robustness_report.py")
  report = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(report)
  results_file = REPO / report.RESULTS
  if not results_file.exists():
    pytest.skip(f"no {report.RESULTS} yet: run python scripts/robustness_report.py")
  results = json.loads(results_file.read_text())
  readme = (REPO / "README.md").read_text()
  assert report.section(readme) == report.render(results), (
      "README's robustness section is stale: run python scripts/robustness_report.py")
