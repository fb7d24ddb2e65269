import polars as pl
import pytest

from recsys_onpolicy.results import (
    SCHEMA,
    metric_rows,
    read_metrics,
    to_frame,
    write_metrics,
    write_parquet_atomic,
)


def _frame():
    rows = metric_rows(domain="recsys", experiment="e", regime="grpo", seed=0, step=1,
                       values={"target/gain": 0.5, "probe/drop": 0.1})
    rows += metric_rows(domain="recsys", experiment="e", regime="grpo", seed=0, step=1,
                        values={"probe/auc": 0.7}, group=3)
    return to_frame(rows)


def test_schema_and_groups():
    f = _frame()
    assert dict(zip(f.columns, f.dtypes)) == SCHEMA
    assert f.filter(pl.col("metric") == "probe/auc")["group"].to_list() == ["3"]
    assert f.filter(pl.col("metric") == "target/gain")["group"].to_list() == [None]
    assert to_frame([]).height == 0 and to_frame([]).schema == pl.Schema(SCHEMA)


def test_roundtrip_and_folder_read(tmp_path):
    write_metrics(_frame(), tmp_path / "a" / "metrics.parquet")
    write_metrics(_frame(), tmp_path / "b" / "metrics.parquet")
    assert read_metrics(tmp_path).height == 6
    assert not list(tmp_path.rglob("*.tmp"))
    # a run directory's own file holds every run: the per-run copies are not read again,
    # also when the run directory is one of several under the folder read
    write_metrics(pl.concat([_frame(), _frame()]), tmp_path / "metrics.parquet")
    assert read_metrics(tmp_path).height == 6
    root = tmp_path / "runs"
    for name in ("x", "y"):  # two run directories, each with a per-run copy
        write_metrics(_frame(), root / name / "metrics.parquet")
        write_metrics(_frame(), root / name / "runs" / "grpo" / "metrics.parquet")
    assert read_metrics(root).height == 2 * 3


def test_a_foreign_file_is_named_with_the_columns_that_differ(tmp_path):
    path = tmp_path / "m.parquet"
    _frame().drop("group").with_columns(pl.col("seed").cast(pl.Utf8), x=1).write_parquet(path)
    with pytest.raises(ValueError) as err:
        read_metrics(path)
    assert str(err.value).startswith(f"{path} does not match the result schema (missing columns "
                                     "['group']; extra columns ['x']; seed is String, not Int64)")


def test_wrong_schema_rejected(tmp_path):
    with pytest.raises(ValueError, match="result schema"):
        write_metrics(pl.DataFrame({"x": [1]}), tmp_path / "m.parquet")
    assert not (tmp_path / "m.parquet").exists()


def test_atomic_write_keeps_old_file_on_failure(tmp_path):
    path = tmp_path / "m.parquet"
    write_metrics(_frame(), path)

    class Boom(pl.DataFrame):
        def write_parquet(self, *a, **k):
            raise OSError("disk full")

    with pytest.raises(OSError):
        write_parquet_atomic(Boom({"x": [1]}), path)
    assert read_metrics(path).height == 3
    assert [p.name for p in tmp_path.iterdir()] == ["m.parquet"]


def test_atomic_files_get_the_usual_permissions(tmp_path):
    """0666 less the umask, like open(path, "w"), not the temporary file's owner-only 0600."""
    import os
    import stat

    from recsys_onpolicy.report import write_text_atomic
    from simulators.atomic import UMASK, atomic_write

    plain = tmp_path / "plain.txt"
    plain.write_text("x")
    for path in (atomic_write(tmp_path / "a.bin", lambda fh: fh.write(b"x")),
                 write_text_atomic("x", tmp_path / "b.html")):
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o666 & ~UMASK
        assert stat.S_IMODE(os.stat(path).st_mode) == stat.S_IMODE(os.stat(plain).st_mode)
