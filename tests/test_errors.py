"""Every bad input a user can make ends in one line naming the file or field and what to do, exit code 2,
no traceback (unless `bench --debug`). One table, one row per case."""
from __future__ import annotations

import io

import numpy as np
import pytest
import yaml
from PIL import Image

from bench.cli import main


def png_bytes(seed: int, size: int = 16) -> bytes:
    arr = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def image_folder(root, bad: dict[str, bytes] | None = None, n: int = 3):
    root.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        (root / f"ok{i}.png").write_bytes(png_bytes(i))
    for name, data in (bad or {}).items():
        (root / name).write_bytes(data)
    return root


def train_config(tmp_path, data: dict, **method_config) -> str:
    cfg = {"method": "edm", "preset": "cpu-tiny", "method_config": {"resolution": 16, **method_config},
           "data": {"kind": "folder", "resolution": 16, **data}, "seed": 0,
           "train": {"images": 8, "batch": 4, "warmup_images": 0, "checkpoint_images": 8, "log_images": 4,
                     "progress": False, "device": "cpu", "threads": 1}}
    p = tmp_path / "run.yaml"
    p.write_text(yaml.safe_dump(cfg))
    return str(p)


def suite_file(tmp_path, text: str | bytes | None = None, name: str = "s.yaml") -> str:
    p = tmp_path / name
    if isinstance(text, bytes):
        p.write_bytes(text)
    elif text is not None:
        p.write_text(text)
    return str(p)


# ---- the cases: build the arguments in tmp_path, and the words the one line must contain ----------
def corrupt(tmp_path):
    root = image_folder(tmp_path / "imgs", {"broken.png": b"\x89PNG\r\n\x1a\n not really a png"})
    return ["train", train_config(tmp_path, {"root": str(root)}), "--run-dir", str(tmp_path / "run")]


def truncated(tmp_path):
    root = image_folder(tmp_path / "imgs", {"cut.png": png_bytes(9)[:60]})
    return ["train", train_config(tmp_path, {"root": str(root)}), "--run-dir", str(tmp_path / "run")]


def corrupt_in_worker(tmp_path):
    args = corrupt(tmp_path)
    return args + ["train.workers=1"]


def resolution_mismatch(tmp_path):      # 16-px data, the 32-px preset: refused before anything is built
    root = image_folder(tmp_path / "imgs")
    cfg = train_config(tmp_path, {"root": str(root)})
    return ["train", cfg, "--run-dir", str(tmp_path / "run"), "method_config.resolution=32"]


def missing_data_root(tmp_path):
    return ["train", train_config(tmp_path, {"root": str(tmp_path / "nowhere")}), "--run-dir", str(tmp_path / "r")]


def missing_run_config(tmp_path):
    return ["train", str(tmp_path / "nope.yaml")]


def missing_asset(tmp_path):
    np.savez(tmp_path / "s.npz", np.zeros((2, 16, 16, 3), np.uint8))
    np.savez(tmp_path / "ref.npz", mu=np.zeros(2048), sigma=np.eye(2048))
    return ["eval", str(tmp_path / "s.npz"), "--ref", str(tmp_path / "ref.npz"), "--metrics", "fid",
            "--assets", str(tmp_path / "assets"), "--no-progress", "--device", "cpu"]


def missing_reference(tmp_path):
    np.savez(tmp_path / "s.npz", np.zeros((2, 16, 16, 3), np.uint8))
    return ["eval", str(tmp_path / "s.npz"), "--ref", str(tmp_path / "absent.npz"), "--metrics", "fid",
            "--assets", str(tmp_path / "assets"), "--no-progress", "--device", "cpu"]


CASES = [
    ("corrupt image", corrupt, ["broken.png", "set data.on_corrupt=skip"]),
    ("truncated image", truncated, ["cut.png", "on_corrupt=skip"]),
    ("corrupt image read by a loader worker", corrupt_in_worker, ["broken.png", "on_corrupt=skip"]),
    ("16-px data, 32-px preset", resolution_mismatch, ["field 'data.resolution'", "16-px", "32 px",
                                                      "data.resolution=32"]),
    ("missing data folder", missing_data_root, ["nowhere"]),
    ("missing run config", missing_run_config, ["nope.yaml", "does not exist"]),
    ("missing asset", missing_asset, ["inception", "missing", "bench assets"]),
    ("missing reference statistics", missing_reference, ["absent.npz"]),
    ("missing suite file", lambda t: ["run", suite_file(t), "--dry-run"], ["s.yaml", "does not exist"]),
    ("suite path is a folder", lambda t: ["run", str(t), "--dry-run"], ["is a directory", "YAML file"]),
    ("suite not YAML", lambda t: ["run", suite_file(t, "name: [unclosed\n"), "--dry-run"],
     ["s.yaml", "not valid YAML", "line"]),
    ("suite not a mapping", lambda t: ["run", suite_file(t, "- a\n- b\n"), "--dry-run"],
     ["s.yaml", "expected a mapping"]),
    ("suite not text", lambda t: ["run", suite_file(t, b"\xff\xfe\x00bad"), "--dry-run"],
     ["s.yaml", "unreadable", "UTF-8"]),
    ("suite unknown field", lambda t: ["run", suite_file(t, "name: x\nbudgte: 1\n"), "--dry-run"],
     ["s.yaml", "budgte"]),
    ("unknown cluster profile", lambda t: ["run", "suites/demo.yaml", "--dry-run", "--executor", "slurm",
                                           "--cluster", "nope"], ["unknown cluster profile 'nope'"]),
]


@pytest.mark.parametrize("case, make, needles", CASES, ids=[c[0] for c in CASES])
def test_bad_input_ends_in_one_line(tmp_path, capsys, monkeypatch, case, make, needles):
    monkeypatch.delenv("BENCH_TRACEBACK", raising=False)
    args = make(tmp_path)
    code = main(args)
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip() and not ln.startswith("warning:")]
    assert code == 2, err
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith(f"bench {args[0]}: error: ")
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


def test_debug_flag_shows_the_traceback(tmp_path, monkeypatch):
    from bench.method import ConfigError

    monkeypatch.delenv("BENCH_TRACEBACK", raising=False)
    with pytest.raises(ConfigError, match="does not exist"):
        main(["--debug", "run", str(tmp_path / "none.yaml")])


def test_skipped_images_are_counted(tmp_path, capsys):
    root = image_folder(tmp_path / "imgs", {"broken.png": b"junk", "cut.png": png_bytes(9)[:60]})
    cfg = train_config(tmp_path, {"root": str(root), "on_corrupt": "skip"})
    assert main(["train", cfg, "--run-dir", str(tmp_path / "run")]) == 0
    err = capsys.readouterr().err
    warnings = [ln for ln in err.splitlines() if ln.startswith("warning: skipping unreadable image")]
    assert len(warnings) == 2 and "2 skipped so far" in warnings[-1], err
    assert {"broken.png", "cut.png"} == {w.split("image ")[1].split(":")[0].rsplit("/", 1)[-1] for w in warnings}


def test_perf_json_option_is_parsed_and_bad_options_are_one_line(tmp_path, capsys):
    from bench.perf.common import pop_json_option

    assert pop_json_option(["workers=1", "--json", "a.json"]) == ("a.json", ["workers=1"])
    assert pop_json_option(["--json=b.json"]) == ("b.json", [])
    assert main(["perf", "data", "wrkers=1"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("bench perf: error:") and "unknown option 'wrkers'" in err and "\n" not in err
    assert main(["perf", "data", "--json"]) == 2
    assert "--json: expected a file name" in capsys.readouterr().err
