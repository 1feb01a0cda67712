"""The command line's behaviour: exit codes, messages, --help, --version, --settings.

The CLI is called in-process (``main([...])``); exit code 0 is success, 1 a user error reported in
one log line naming the file and the problem, 2 a usage error (argparse).
"""
from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest

from pvsquant import __version__
from pvsquant.cli import main
from pvsquant.errors import InputSettingsError
from pvsquant.types import Settings

from .conftest import save_nifti

COMMANDS = ("run", "train", "evaluate", "finetune", "report", "demo", "bids")


def test_help_lists_every_command(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert all(command in out for command in COMMANDS)


@pytest.mark.parametrize("command", COMMANDS)
def test_each_command_has_help(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    assert f"usage: pvsquant {command}" in capsys.readouterr().out


def test_version(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.strip() == f"pvsquant {__version__}"


def test_usage_errors_exit_2(capsys):
    for argv in ([], ["no-such-command"], ["run", "--t1", "t1.nii.gz", "--out", "o"]):
        with pytest.raises(SystemExit) as exit_info:
            main(argv)
        assert exit_info.value.code == 2, argv
    assert "--t2" in capsys.readouterr().err


def test_bad_input_exits_nonzero_and_writes_nothing(phantom_case, tmp_path, caplog):
    t1, _, _ = phantom_case
    out = tmp_path / "out"
    code = main(["run", "--t1", str(t1), "--t2", str(tmp_path / "missing_T2.nii.gz"), "--out", str(out)])
    assert code == 1
    assert not out.exists() and list(tmp_path.iterdir()) == []
    assert "missing_T2.nii.gz does not exist" in caplog.text


def test_refuses_existing_output(phantom_case, tmp_path, caplog):
    t1, t2, aseg = phantom_case
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("precious")
    assert main(["run", "--t1", str(t1), "--t2", str(t2), "--labels", str(aseg), "--out", str(out)]) == 1
    assert "--overwrite" in caplog.text
    assert (out / "keep.txt").read_text() == "precious"


def test_labels_lacking_structures(phantom_case, tmp_path, caplog):
    t1, t2, _ = phantom_case
    lab = np.zeros((60, 70, 60), np.int32)
    lab[20:40, 20:40, 20:40] = 17
    aseg = save_nifti(tmp_path / "only_hippo.nii.gz", lab, np.diag([3.0, 3.0, 3.0, 1.0]))
    assert main(["run", "--t1", str(t1), "--t2", str(t2), "--labels", str(aseg), "--out", str(tmp_path / "o")]) == 1
    assert "lacks white matter (2/41)" in caplog.text


def test_bad_models_folder_or_weights_exit_nonzero_and_write_nothing(phantom_case, tmp_path, caplog):
    t1, t2, aseg = phantom_case
    out = tmp_path / "out"
    run = ["run", "--t1", str(t1), "--t2", str(t2), "--labels", str(aseg), "--out", str(out)]
    missing = tmp_path / "no_such_models"
    assert main([*run, "--models", str(missing)]) == 1
    assert str(missing) in caplog.text and not out.exists()
    bad = tmp_path / "models"
    bad.mkdir()
    (bad / "basal_ganglia_gpunet.pt").write_bytes(b"not a checkpoint")
    assert main([*run, "--models", str(bad)]) == 1
    assert "basal_ganglia_gpunet.pt: not pvsquant weights" in caplog.text and not out.exists()


def test_train_without_label_maps_exits_nonzero(tmp_path, caplog):
    empty = tmp_path / "maps"
    empty.mkdir()
    run = tmp_path / "run"
    assert main(["train", "--region", "midbrain", "--model", "gpunet", "--out", str(run), "--maps", str(empty)]) == 1
    assert f"need more than 2 label maps (*.nii, *.nii.gz) in {empty}, found 0" in caplog.text


def test_train_with_a_missing_background_scan_names_it(tmp_path, caplog):
    t1 = tmp_path / "t1.nii.gz"
    t1.write_bytes(b"")
    missing = tmp_path / "no_t2.nii.gz"
    argv = ["train", "--region", "midbrain", "--model", "gpunet", "--out", str(tmp_path / "run"),
            "--background", str(t1), str(missing)]
    assert main(argv) == 1
    assert f"--background: {missing} is not a file" in caplog.text and not (tmp_path / "run").exists()


@pytest.mark.parametrize("flag", ["--outside-weight", "--floor-weight"])
def test_train_clean_pass_weights_without_backgrounds_are_refused(tmp_path, caplog, flag):
    argv = ["train", "--region", "midbrain", "--model", "gpunet", "--out", str(tmp_path / "run"), flag, "1.0"]
    assert main(argv) == 1
    assert "--outside-weight and --floor-weight train the GP-Unet's clean pass" in caplog.text
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(("flag", "value", "message"), [
    ("--floor-weight", "-0.02", "--floor-weight must be 0 or more, got -0.02"),
    ("--outside-weight", "-1", "--outside-weight must be 0 or more, got -1"),
    ("--count-weight", "-0.05", "--count-weight must be 0 or more, got -0.05"),
    ("--background-fraction", "1.5", "--background-fraction is a share of each batch (0 to 1), got 1.5"),
    ("--min-visibility", "30", "--min-visibility is a partial-volume fraction (0 to 1), got 30"),
])
def test_train_refuses_weights_that_would_silently_do_nothing(tmp_path, caplog, flag, value, message):
    """A negative clean-pass weight used to switch its term off without a word."""
    argv = ["train", "--region", "midbrain", "--model", "gpunet", "--out", str(tmp_path / "run"), flag, value]
    assert main(argv) == 1
    assert message in caplog.text and not (tmp_path / "run").exists()


def test_train_help_states_the_floor_level_training_uses(capsys):
    from pvsquant.learning.training import TrainSettings

    with pytest.raises(SystemExit):
        main(["train", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert "(|value| < 5e-4 PVS per voxel, TrainSettings.floor_level)" in help_text
    assert TrainSettings.floor_level == 5e-4


def test_report_on_a_folder_that_is_no_run(tmp_path, caplog):
    assert main(["report", str(tmp_path)]) == 1
    assert f"{tmp_path} is not a pvsquant run output" in caplog.text


@pytest.mark.parametrize(("content", "message"), [
    ("{not json", "is not readable JSON"),
    ('{"cso_offset_mm": 10, "no_such_setting": 1}', "unknown setting(s) no_such_setting"),
    ('{"threads": "two"}', "threads must be a number"),
    ('{"target_spacing_mm": 0.5}', "target_spacing_mm must be a list"),
    ('{"detection_prominence": {"hippocampus": 5e-4}}', "detection_prominence: unknown region(s) hippocampus"),
    ('{"detection_prominence": {"midbrain": -1e-3}}', "detection_prominence must be 0 or more"),
])
def test_bad_settings_file_exits_nonzero_and_writes_nothing(phantom_case, tmp_path, caplog, content, message):
    t1, t2, aseg = phantom_case
    settings = tmp_path / "settings.json"
    settings.write_text(content)
    out = tmp_path / "out"
    code = main(["run", "--t1", str(t1), "--t2", str(t2), "--labels", str(aseg), "--out", str(out),
                 "--settings", str(settings)])
    assert code == 1 and not out.exists()
    assert "InputSettingsError" in caplog.text and message in caplog.text and str(settings) in caplog.text


def test_settings_round_trip_through_json(tmp_path):
    changed = Settings(cso_offset_mm=12.5, target_spacing_mm=(0.6, 0.6, 1.0), refine_labels=False,
                       roi_box_mm={**Settings().roi_box_mm, "midbrain": (40.0, 40.0, 32.0)},
                       frangi=replace(Settings().frangi, sigmas_mm=(0.5, 1.0), lesion_intensity=None))
    path = tmp_path / "settings.json"
    path.write_text(json.dumps(changed.to_json()))
    assert Settings.from_json(path) == changed
    assert Settings.from_json({"threads": 1}) == Settings(threads=1)  # a partial file changes only what it names
    with pytest.raises(InputSettingsError, match="does not exist"):
        Settings.from_json(tmp_path / "nope.json")
    with pytest.raises(InputSettingsError, match=r"frangi: unknown setting\(s\) sigma"):
        Settings.from_json({"frangi": {"sigma": 1.0}})
    with pytest.raises(InputSettingsError, match="threshold must be in"):
        Settings.from_json({"frangi": {"threshold": 2.0}})


def test_run_reproduces_a_settings_file_and_options_override_it(phantom_case, tmp_path):
    t1, t2, aseg = phantom_case
    settings = tmp_path / "mine.json"
    settings.write_text(json.dumps({"cso_offset_mm": 12.0, "threads": 1, "detection_min_mass": 0.2}))
    out = tmp_path / "out"
    assert main(["run", "--t1", str(t1), "--t2", str(t2), "--labels", str(aseg), "--out", str(out),
                 "--settings", str(settings), "--threads", "2", "--match-slice-thickness", "6"]) == 0
    saved = json.loads((out / "settings.json").read_text())
    assert saved["cso_offset_mm"] == 12.0 and saved["detection_min_mass"] == 0.2
    assert saved["threads"] == 2  # the command line wins over the file
    assert saved["match_slice_thickness_mm"] == 6.0
    assert Settings.from_json(out / "settings.json").cso_offset_mm == 12.0
    slices = json.loads((out / "qc.json").read_text())["inputs"]["slices"]
    assert slices == {"target_mm": 6.0, "native_mm": 4.0, "slice_axis": 2, "applied": True}  # the phantom's 4 mm


def test_a_bad_slice_thickness_option_exits_nonzero_and_writes_nothing(phantom_case, tmp_path, caplog):
    t1, t2, aseg = phantom_case
    out = tmp_path / "out"
    assert main(["run", "--t1", str(t1), "--t2", str(t2), "--labels", str(aseg), "--out", str(out),
                 "--match-slice-thickness", "-3"]) == 1
    assert not out.exists() and "match_slice_thickness_mm must be a slice thickness" in caplog.text


def test_t2_only_run(phantom_case, tmp_path):
    """No --t1: the anatomy is made on the T2 (here the user's labels, on the T2's world), nothing is
    registered, and qc.json and the report say so."""
    _, t2, aseg = phantom_case
    out = tmp_path / "out"
    assert main(["run", "--t2", str(t2), "--labels", str(aseg), "--out", str(out)]) == 0
    qc = json.loads((out / "qc.json").read_text())
    assert qc["anatomy_from"] == "T2" and qc["inputs"]["t1"] is None
    assert qc["registration"]["method"].startswith("none")
    assert not (out / "registration.png").exists() and (out / "counts.tsv").is_file()
    assert "anatomy_from_t2" in {f["code"] for f in qc["flags"]}
    assert not {c["name"] for c in qc["checks"]} & {"t1_slice_mm", "t1_wm_to_csf", "registration_mi"}
    assert "from the T2" in (out / "report.html").read_text()


def test_run_inputs_from_dicom_folders_record_the_series_and_scanner(tmp_path):
    from pvsquant.cli import build_parser, resolve_run_inputs

    from .conftest import oblique_affine
    from .dicom_writer import SeriesSpec, write_series

    array = np.random.default_rng(0).uniform(100, 900, (40, 40, 18)).astype(np.float32)
    affine = oblique_affine((1.6, 1.6, 4.0), array.shape, angle_deg=10.0)
    write_series(array, affine, tmp_path / "study" / "t2", SeriesSpec(number=7, description="T2_TSE_TRA"))
    args = build_parser().parse_args(["run", "--t2", str(tmp_path / "study"), "--t2-series", "7",
                                      "--out", str(tmp_path / "out")])
    inputs, extra = resolve_run_inputs(args, tmp_path / "work")
    assert inputs.t1 is None and inputs.t2.suffixes[-2:] == [".nii", ".gz"] and inputs.t2.is_file()
    assert extra["scanner"] == "Siemens Prisma 3T"
    assert extra["dicom"]["t2"]["series_number"] == 7 and extra["dicom"]["t2"]["n_files"] == 18
    assert extra["dicom"]["t2"]["header"]["SliceThickness"] == 4.0


def test_run_with_a_dicom_study_of_several_series_lists_them(tmp_path, caplog):
    from .conftest import oblique_affine
    from .dicom_writer import SeriesSpec, write_series

    array = np.random.default_rng(0).uniform(100, 900, (40, 40, 18)).astype(np.float32)
    affine = oblique_affine((1.6, 1.6, 4.0), array.shape, angle_deg=0.0)
    write_series(array, affine, tmp_path / "study" / "a", SeriesSpec(number=3, description="T1_SE"), prefix="A")
    write_series(array, affine, tmp_path / "study" / "b", SeriesSpec(number=5, description="T2_TSE"), prefix="B")
    assert main(["run", "--t2", str(tmp_path / "study"), "--out", str(tmp_path / "out")]) == 1
    assert "series 3 'T1_SE'" in caplog.text and "series 5 'T2_TSE'" in caplog.text and "--t2-series" in caplog.text
    assert not (tmp_path / "out").exists()


def test_settings_given_inline_as_a_json_object(tmp_path, caplog):
    from pvsquant.cli import build_parser, settings_from_args

    args = build_parser().parse_args(["run", "--t2", "t2.nii.gz", "--out", str(tmp_path / "o"),
                                      "--settings", '{"csf": {"enabled": false}, "models_dir": "/a//b"}'])
    settings = settings_from_args(args)
    assert settings.csf.enabled is False and settings.models_dir == "/a//b"  # the string as given
    assert settings.lesions == Settings().lesions  # only what it names changes
    out = tmp_path / "out"
    assert main(["run", "--t2", "t2.nii.gz", "--out", str(out), "--settings", '{"csf": {"enabled": fals}}']) == 1
    assert "is not a readable JSON object" in caplog.text and not out.exists()
    assert main(["run", "--t2", "t2.nii.gz", "--out", str(out), "--settings", '{"csf": 3}']) == 1
    assert "csf must be an object" in caplog.text
