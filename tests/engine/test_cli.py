"""The `ppr` command line: JSON output, exit codes, one clear line on bad input."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]


def ppr(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ppr_cli.main", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)


def test_help_and_methods():
    out = ppr("--help")
    assert out.returncode == 0 and "make-backdoor" in out.stdout and "gate" in out.stdout
    cat = json.loads(ppr("methods", "--json").stdout)
    assert {"architectures", "attacks", "methods", "data_kinds"} == set(cat)
    methods = {m["name"]: m for m in cat["methods"]}
    assert {"pam", "nc", "sau", "clp", "bnp", "rnp", "npd", "mcr"} <= set(methods)
    assert methods["clp"]["kind"] == "data-free" and methods["nc"]["kind"] == "mitigation"
    assert all(m["kind"] and m["reference"] for m in methods.values()), methods
    assert "ECCV 2022" in methods["clp"]["reference"]
    text = ppr("methods").stdout
    assert "clp              [data-free] CLP" in text and "reference: Zheng et al." in text
    assert "examples" in [a["name"] for a in cat["attacks"]]
    assert "backdoorbench" in [k["name"] for k in cat["data_kinds"]]


def test_gate_starts_without_torch():
    code = ("import sys, runpy; sys.argv=['ppr','gate','--help'];\n"
            "try:\n    runpy.run_module('ppr_cli.main', run_name='__main__')\n"
            "except SystemExit:\n    pass\nprint('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert out.stdout.strip().endswith("False"), out.stdout + out.stderr


def test_make_backdoor_eval_purify_audit(tmp_path):
    ckpt = tmp_path / "bd.safetensors"
    made = ppr("make-backdoor", "--arch", "small_cnn", "--data", "synthetic:?n=2000&seed=0",
               "--test", "synthetic:?n=500&seed=1", "--epochs", "6", "--lr", "0.05",
               "--no-augment", "--out", str(ckpt), "--json")
    assert made.returncode == 0, made.stderr
    info = json.loads(made.stdout)
    assert info["asr"] >= 0.9 and info["c_acc"] >= 0.8 and info["poisoned"] == 200
    assert info["warnings"] == []
    ev = json.loads(ppr("eval", str(ckpt), "--arch", "small_cnn", "--data",
                        "synthetic:?n=500&seed=1", "--attack", "badnets", "--json").stdout)
    assert ev["asr"] == info["asr"] and ev["sha256"] == info["sha256"]

    out = tmp_path / "ep.safetensors"
    pur = ppr("purify", str(ckpt), "--method", "ep", "--arch", "small_cnn", "--clean",
              "synthetic:?n=500&seed=2", "--test", "synthetic:?n=500&seed=1", "--attack",
              "badnets", "--set", "epochs=5", "--set", "augment=false", "--out", str(out),
              "--json")
    assert pur.returncode == 0, pur.stderr
    rep = json.loads(pur.stdout)
    ep = rep["methods"][0]
    assert ep["o_asr"] < 0.2 and ep["der"] > 0.8 and ep["seconds"] > 0
    assert out.exists() and (tmp_path / "ep-report" / "report.html").exists()

    spec = tmp_path / "audit.yaml"
    spec.write_text(yaml.safe_dump({
        "model": {"arch": "small_cnn"},
        "data": {"clean": "synthetic:?n=300&seed=2", "test": "synthetic:?n=300&seed=1"},
        "triggers": [{"attack": "badnets"}],
        "plan": {"methods": [{"name": "ft", "epochs": 1}], "qra": {"enabled": False},
                 "lmc": {"enabled": False}, "retune": {"epochs": 1, "clean_num": 95}},
        "gate": ["ft.o_asr <= 0.0"]}))
    aud = ppr("audit", str(ckpt), "--spec", str(spec), "--out", str(tmp_path / "rep"))
    assert aud.returncode == 1 and "FAIL ft.o_asr <= 0.0" in aud.stdout  # the gate failed
    # without a terminal, one line per stage start and end, with its seconds
    assert "start purify:ft" in aud.stderr and "done  purify:ft (" in aud.stderr
    assert "start plan: estimated" in aud.stderr and "on cpu (" in aud.stderr  # before work
    assert json.loads((tmp_path / "rep" / "report.json").read_text())["gate"]["passed"] is False


def test_make_backdoor_warns_when_the_backdoor_barely_took(tmp_path):
    """Three poisoned images and one epoch: the model answers the trigger hardly at all, and
    an audit of it would judge nothing; make-backdoor says so, in --json too."""
    args = ["make-backdoor", "--arch", "small_cnn", "--data", "synthetic:?n=300&seed=0",
            "--test", "synthetic:?n=300&seed=1", "--epochs", "1", "--rate", "0.01",
            "--target", "3", "--no-augment"]
    made = ppr(*args, "--out", str(tmp_path / "w.safetensors"), "--json")
    assert made.returncode == 0, made.stderr
    info = json.loads(made.stdout)
    assert info["asr"] < 0.5
    assert any("the backdoor barely took" in w for w in info["warnings"])
    plain = ppr(*args, "--out", str(tmp_path / "w2.safetensors"))
    assert "warning: the backdoor barely took" in plain.stderr


def test_bad_input_is_one_line_and_exit_2(tmp_path):
    for args, message in [
        (("eval", str(tmp_path / "none.safetensors"), "--arch", "small_cnn", "--data",
          "synthetic:"), "does not exist"),
        (("eval", str(tmp_path), "--arch", "nonet", "--data", "synthetic:"),
         "unknown architecture 'nonet'"),
        (("make-backdoor", "--out", str(tmp_path / "x.pt")), "must end in .safetensors"),
        (("audit", str(tmp_path / "m.safetensors"), "--spec", str(tmp_path / "no.yaml")),
         "cannot read spec"),
    ]:
        out = ppr(*args)
        assert out.returncode == 2, (args, out.stderr)
        lines = out.stderr.strip().splitlines()
        assert len(lines) == 1 and message in lines[0] and "Traceback" not in out.stderr
