"""The Python API (dpmed/__init__.py), and the README's example of it, run as written."""

import re

import pytest

import dpmed
from dpmed.errors import ConfigError
from tests.conftest import REPO


def _readme_example() -> str:
    readme = (REPO / "README.md").read_text()
    section = readme.split("## Python API", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_the_readme_api_example_runs(real_data, tmp_path, monkeypatch, capsys):
    import dpmed.run  # noqa: F401  (the module loaded first must not hide the API)

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DPMED_DATA", str(real_data))
    scope: dict = {}
    exec(compile(_readme_example(), "README.md", "exec"), scope)
    printed = capsys.readouterr().out
    assert "for epsilon 2 per image" in printed and "392.0" in printed
    assert "test accuracy" in printed
    [row] = scope["rows"].to_dict("records")
    assert row["test_accuracy"] == scope["summary"]["test"]["accuracy"]
    assert row["epsilon_per_image"] == 392.0 and row["guarantee_holds"] is True
    assert "data_root" not in row
    assert scope["plan"]["epsilon_per_image"] <= 2


def test_guarantee_and_plan_refuse_bad_settings_with_a_config_error():
    with pytest.raises(ConfigError, match="not both"):
        dpmed.guarantee("laplace", image_size=28, noise_scale=1, target_epsilon=1)
    with pytest.raises(ConfigError, match="one"):
        dpmed.plan_dpsgd(n_train=100, batch_size=10, epochs=1)
