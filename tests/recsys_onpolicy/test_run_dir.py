import pytest

from recsys_onpolicy.run_dir import check_resume_config, prepare_run_dir, write_config
from simulators.typed_config import ConfigError


def test_new_dir_created(tmp_path):
    out = prepare_run_dir(tmp_path / "r")
    assert out.is_dir()


def test_existing_dir_is_not_touched(tmp_path):
    out = tmp_path / "r"
    out.mkdir()
    (out / "keep.txt").write_text("precious")
    with pytest.raises(ConfigError, match="--resume .* --overwrite"):
        prepare_run_dir(out)
    assert (out / "keep.txt").read_text() == "precious"


def test_overwrite_and_resume(tmp_path):
    out = tmp_path / "r"
    out.mkdir()
    (out / "old.txt").write_text("x")
    with pytest.raises(ConfigError, match="holds no run"):
        prepare_run_dir(out, resume=True)
    with pytest.raises(ConfigError, match="exclude each other"):
        prepare_run_dir(out, resume=True, overwrite=True)
    assert (out / "old.txt").exists()
    with pytest.raises(ConfigError, match="holds no config.yaml"):  # not a run: left alone
        prepare_run_dir(out, overwrite=True)
    assert (out / "old.txt").exists()
    write_config(out, {"a": 0})  # now it is a run folder
    prepare_run_dir(out, overwrite=True)
    assert not (out / "old.txt").exists() and not (out / "config.yaml").exists()
    write_config(out, {"a": 1, "b": {"c": 2, "d": 3}})
    assert prepare_run_dir(out, resume=True) == out
    check_resume_config(out, {"a": 1, "b": {"c": 2, "d": 3}})
    with pytest.raises(ConfigError, match=r"differs .*\(at a, b.d\)"):
        check_resume_config(out, {"a": 2, "b": {"c": 2, "d": 4}})


def test_file_in_the_way(tmp_path):
    f = tmp_path / "f"
    f.write_text("x")
    with pytest.raises(ConfigError, match="is a file"):
        prepare_run_dir(f, overwrite=True)
    assert f.read_text() == "x"
