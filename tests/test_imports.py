"""User code named on the command line (``--loss my_losses:g``, ``--loss path/file.py:g``), and a
missing optional extra reported in one line."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest
import torch

from treemdp.imports import import_object, is_file_spec
from treemdp.losses import get_objective, preference_loss

SOFTPLUS = textwrap.dedent('''
    import torch.nn.functional as F


    def softplus_g(x):
        return F.softplus(-x)
''')


def run_cli(args, cwd, treemdp_cmd, cli_env):
    env = dict(cli_env)
    env.pop("PYTHONPATH", None)
    return subprocess.run(treemdp_cmd + args, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


def test_file_spec_loads_from_the_file_and_names_it_absolutely(tmp_path, monkeypatch):
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "helper.py").write_text("SCALE = 2.0\n")
    (tmp_path / "sub" / "mine.py").write_text("from helper import SCALE\n\ndef g(x):\n    return SCALE * x\n")
    monkeypatch.chdir(tmp_path)
    g, canonical = import_object("sub/mine.py:g")
    assert g(torch.tensor(3.0)).item() == 6.0  # its sibling module imported, as for a script
    assert canonical == f"{(tmp_path / 'sub' / 'mine.py').resolve()}:g"
    assert import_object(canonical)[0] is g  # loaded once per file
    assert is_file_spec("a/b.py:f") and not is_file_spec("a.b:f")


def test_module_in_the_current_folder_is_found_and_recorded_by_its_file(tmp_path, monkeypatch):
    (tmp_path / "my_losses_cwd.py").write_text(SOFTPLUS)
    monkeypatch.chdir(tmp_path)
    objective = get_objective("my_losses_cwd:softplus_g")
    assert objective.name == f"{(tmp_path / 'my_losses_cwd.py').resolve()}:softplus_g"
    w, l = torch.tensor([-1.0, -2.0]), torch.tensor([-3.0, -1.5])
    zero = torch.zeros(2)
    torch.testing.assert_close(preference_loss(w, l, zero, zero, beta=0.1, loss=objective),
                               preference_loss(w, l, zero, zero, beta=0.1, loss="dpo"))
    # installed modules keep their name; a missing one says where it looked
    assert get_objective("treemdp.losses:dpo_g").name == "treemdp.losses:dpo_g"
    with pytest.raises(ValueError, match="nor a file no_such_losses.py in the current folder"):
        get_objective("no_such_losses:g")
    with pytest.raises(ValueError, match="no file"):
        get_objective("no/such/file.py:g")


def test_cli_loss_from_the_current_folder_and_from_a_file(tmp_path, treemdp_cmd, cli_env):
    (tmp_path / "my_losses.py").write_text(SOFTPLUS)
    flags = ["--beta", "0.1", "--sft-steps", "5", "--daa-steps", "5", "--no-plot", "--quiet"]
    by_module = run_cli(["train", "--loss", "my_losses:softplus_g", *flags], tmp_path, treemdp_cmd, cli_env)
    assert by_module.returncode == 0, by_module.stderr
    run = tmp_path / "runs" / "my_losses-softplus_g-beta0.1-seed0"
    config = json.loads((run / "config.json").read_text())
    assert config["loss"] == f"{(tmp_path / 'my_losses.py').resolve()}:softplus_g"

    by_file = run_cli(["train", "--loss", "./my_losses.py:softplus_g", "--out", "runs/file", *flags],
                      tmp_path, treemdp_cmd, cli_env)
    assert by_file.returncode == 0, by_file.stderr
    summary = json.loads((tmp_path / "runs" / "file" / "summary.json").read_text())
    assert summary["final_loss"] == json.loads((run / "summary.json").read_text())["final_loss"]

    # the config names the file: it reruns from another folder
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    again = run_cli(["train", "--config", str(run / "config.json"), "--out", "again", "--no-plot", "--quiet"],
                    elsewhere, treemdp_cmd, cli_env)
    assert again.returncode == 0, again.stderr
    assert json.loads((elsewhere / "again" / "summary.json").read_text())["final_loss"] == summary["final_loss"]

    missing = run_cli(["train", "--loss", "nowhere.py:g", *flags], tmp_path, treemdp_cmd, cli_env)
    assert missing.returncode == 2 and missing.stderr.startswith("error:") and "Traceback" not in missing.stderr
    assert len(missing.stderr.strip().splitlines()) == 1


#: A meta-path finder that refuses ``transformers``, as on an install without the llm extra.
BLOCK_TRANSFORMERS = textwrap.dedent('''
    import sys

    class Blocker:
        def find_spec(self, name, path=None, target=None):
            if name == "transformers" or name.startswith("transformers."):
                raise ModuleNotFoundError(f"No module named {name!r}", name=name)
            return None

    sys.meta_path.insert(0, Blocker())
    from treemdp.cli import main
    sys.exit(main(sys.argv[1:]))
''')


def test_llm_without_the_extra_is_one_error_line(tmp_path, cli_env):
    done = subprocess.run([sys.executable, "-c", BLOCK_TRANSFORMERS, "llm", "tiny-model", "--out", "m"],
                          cwd=tmp_path, env=cli_env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in done.stderr, done.stderr
    assert lines[0].startswith("error:") and "pip install 'treemdp[llm]'" in lines[0] and "transformers" in lines[0]
    assert not (tmp_path / "m").exists()


def test_extra_providing_reads_the_package_metadata():
    from treemdp.cli import extra_providing
    assert extra_providing("transformers") == "llm"
    assert extra_providing("transformers.models.gpt_neox") == "llm"
    assert extra_providing("nbformat") == "lessons"
    assert extra_providing("numpy") is None and extra_providing("no_such_thing") is None
