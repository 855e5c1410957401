"""GLUE TSV reading (real files' quirks), bad input, and the split protocols."""

import pytest

from peft_cli.core.compose import compose
from peft_cli.core.config import DataConfig
from peft_cli.core.errors import UserError
from peft_cli.data.glue import load_splits, read_tsv


def task(name):
    return compose([f"task={name}"]).task


def test_mrpc_bom_and_literal_quotes(tiny_glue):
    ex = read_tsv(tiny_glue / "MRPC" / "train.tsv", task("mrpc"))
    assert len(ex) == 48
    assert ex[0]["text_b"].startswith('"')  # a quote is text, not a CSV quote
    assert ex[0]["label"] in (0, 1)


def test_cola_without_header(tiny_glue):
    ex = read_tsv(tiny_glue / "CoLA" / "train.tsv", task("cola"))
    assert len(ex) == 48 and ex[0]["text_b"] is None


def test_stsb_is_regression(tiny_glue):
    ex = read_tsv(tiny_glue / "STS-B" / "dev.tsv", task("stsb"))
    assert isinstance(ex[0]["label"], float)


def test_missing_column_names_the_file(tmp_path):
    (tmp_path / "RTE").mkdir()
    f = tmp_path / "RTE" / "train.tsv"
    f.write_text("index\tsentence1\tlabel\n0\ta\tentailment\n")
    with pytest.raises(UserError, match=r"train.tsv: missing column 'sentence2'"):
        read_tsv(f, task("rte"))


def test_bad_label_names_file_and_line(tmp_path):
    f = tmp_path / "train.tsv"
    f.write_text("index\tsentence1\tsentence2\tlabel\n0\ta\tb\tentailment\n1\ta\tb\tmaybe\n")
    with pytest.raises(UserError, match=r"train.tsv:3: bad label 'maybe'"):
        read_tsv(f, task("rte"))


def test_short_row_names_line(tmp_path):
    f = tmp_path / "train.tsv"
    f.write_text("index\tsentence1\tsentence2\tlabel\n0\ta\n")
    with pytest.raises(UserError, match=r"train.tsv:2: row has 2 columns"):
        read_tsv(f, task("rte"))


def test_missing_glue_dir():
    with pytest.raises(UserError, match="data.glue_dir=/no/such"):
        load_splits(task("rte"), DataConfig(glue_dir="/no/such"))


def test_holdout_small_task_splits_dev_in_halves(tiny_glue):
    s = load_splits(task("rte"), DataConfig(glue_dir=str(tiny_glue)))
    val, test = {e["idx"] for e in s.validation}, {e["idx"] for e in s.tests[0]}
    assert len(val) == 12 and len(test) == 12 and not val & test
    assert len(s.train) == 48
    again = load_splits(task("rte"), DataConfig(glue_dir=str(tiny_glue)))
    assert [e["idx"] for e in again.validation] == [e["idx"] for e in s.validation]  # seeded
    other = load_splits(task("rte"), DataConfig(glue_dir=str(tiny_glue), split_seed=7))
    assert [e["idx"] for e in other.validation] != [e["idx"] for e in s.validation]


def test_holdout_large_task_holds_out_train(tiny_glue):
    s = load_splits(task("sst2"), DataConfig(glue_dir=str(tiny_glue), holdout_size=10))
    assert len(s.validation) == 10 and len(s.train) == 38 and len(s.tests[0]) == 24
    assert not {e["idx"] for e in s.validation} & {e["idx"] for e in s.train}


def test_dev_protocol(tiny_glue):
    s = load_splits(task("rte"), DataConfig(glue_dir=str(tiny_glue), protocol="dev"))
    assert s.validation == s.tests[0] and len(s.tests[0]) == 24


def test_real_glue_sizes(shared_glue):
    """The canonical files (SOURCES.md row counts) parse completely."""
    for name, n_train, n_dev in [
        ("rte", 2490, 277),
        ("mrpc", 3668, 408),
        ("cola", 8551, 1043),
        ("stsb", 5749, 1500),
        ("wnli", 635, 71),
    ]:
        t = task(name)
        assert len(read_tsv(shared_glue / t.folder / "train.tsv", t)) == n_train
        assert len(read_tsv(shared_glue / t.folder / "dev.tsv", t)) == n_dev
