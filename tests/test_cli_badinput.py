"""Every bad input, every command: one line ``error: …`` on stderr, exit code 2, no traceback, nothing written.

The table below is the fuzz campaign of issue 13 kept as a test: each case is a command line (with
``{name}`` placeholders for fixture files), the message fragment (a regular expression) the error line
must contain, and nothing else. Every case runs in-process through the entry point
(:func:`probprune.cli.main`) in its own empty working folder, with ``$PROBPRUNE_DATA`` inside it, so a
file written anywhere relative (``--out``, ``--runs-dir``, a prepared dataset) is caught. Hypothesis
covers the large spaces (random text for numeric options). A few cases run the installed entry point
in a subprocess.
"""

from __future__ import annotations

import gzip
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import save_file

from probprune.cli import main

Case = tuple[str, list[str], str]

# --------------------------------------------------------------------------- fixtures

_T342 = {"0.weight": (4, 3), "2.weight": (2, 4)}


def _weights(path: Path, dtype: torch.dtype = torch.float32, shapes: dict[str, tuple[int, ...]] | None = None,
             fill: float | None = None, metadata: dict[str, str] | None = None) -> str:
    g = torch.Generator().manual_seed(0)
    tensors = {}
    for name, shape in (shapes or _T342).items():
        t = torch.randn(*shape, generator=g)
        if fill is not None:
            t = torch.full(shape, fill)
        if dtype == torch.bool:
            t = t > 0
        elif dtype.is_complex:
            t = torch.complex(t, t)
        elif not dtype.is_floating_point:
            t = (t * 3).round()
            if dtype == torch.uint8:
                t = t.abs()
        tensors[name] = t.to(dtype)
    save_file(tensors, str(path), metadata=metadata)
    return str(path)


def build_fixtures(root: Path) -> dict[str, str]:
    """Write every fixture file once; returns placeholder name → path."""
    root.mkdir(parents=True, exist_ok=True)
    f: dict[str, str] = {"root": str(root)}
    f["t"] = _weights(root / "target.safetensors")
    f["p"] = _weights(root / "pruned.safetensors", fill=0.0)
    for name, dt in (("i32", torch.int32), ("i64", torch.int64), ("u8", torch.uint8), ("bool", torch.bool),
                     ("f16", torch.float16), ("bf16", torch.bfloat16), ("c64", torch.complex64)):
        f[name] = _weights(root / f"w_{name}.safetensors", dt)
    f["nan"] = _weights(root / "nan.safetensors", fill=float("nan"))
    f["inf"] = _weights(root / "inf.safetensors", fill=float("inf"))
    f["shape"] = _weights(root / "shape.safetensors", shapes={"0.weight": (5, 3), "2.weight": (2, 5)})
    f["missing_t"] = _weights(root / "missing_t.safetensors", shapes={"0.weight": (4, 3)})
    f["extra_t"] = _weights(root / "extra_t.safetensors", shapes={**_T342, "9.weight": (2, 2)})
    f["meta"] = _weights(root / "meta.safetensors", metadata={"arch": "fcn:3,5,2"})
    (root / "garbage.safetensors").write_bytes(b"\x00\x01 not a safetensors file" * 10)
    f["garbage"] = str(root / "garbage.safetensors")
    (root / "empty.safetensors").write_bytes(b"")
    f["empty"] = str(root / "empty.safetensors")
    (root / "hugehdr.safetensors").write_bytes((2 ** 62).to_bytes(8, "little") + b"{}")
    f["hugehdr"] = str(root / "hugehdr.safetensors")
    (root / "dir.safetensors").mkdir()
    f["dirst"] = str(root / "dir.safetensors")
    (root / "adir").mkdir()
    f["dir"] = str(root / "adir")
    (root / "afile").write_text("x")
    f["file"] = str(root / "afile")
    f["nowhere"] = str(root / "no" / "such" / "folder")
    f["devzero"] = "/dev/zero"  # endless: must be refused unread
    # configs
    cfgs = {
        "cfg_latin1": "[net]\nactivation = \"r\xe9lu\"\n".encode("latin-1"),
        "cfg_badtoml": b"[net\nwidths = [1,2",
        "cfg_convs5": b"[net]\nconvs = 5\n",
        "cfg_convs_str": b"[net]\nkind = \"cnn\"\ninput_shape = [1, 8, 8]\nconvs = [\"c6k5\"]\nwidths = [10]\n",
        "cfg_widths_str": b"[net]\nwidths = \"abc\"\n",
        "cfg_widths_float": b"[net]\nwidths = [16, 1.5, 4]\n",
        "cfg_section": b"[bogus]\nx = 1\n",
        "cfg_key": b"[mc]\nbogus = 1\n",
        "cfg_seed_big": b"[mc]\nseed = 9223372036854775807\nn_trials = 0\n",
        "cfg_seed_neg": b"[mc]\nseed = -1\n",
        "cfg_device": b"[mc]\ndevice = \"tpu\"\n",
        "cfg_trials": b"[mc]\nn_trials = 1000000000\n",
        "cfg_net_scalar": b"net = 5\n",
        "cfg_prunes_scalar": b"prunes = 5\n",
        "cfg_prunes_bad": b"[[prunes]]\nmethod = \"magnitude\"\np = 0.5\n",
        "cfg_law_inf": b"[law]\nscale = inf\n",
        "cfg_delta": b"[bound]\ndelta = 1.0\n",
        "cfg_array_top": b"x = [1, 2]\n",
        "cfg_arch_bad": b"[net]\narch = \"fcn:a,b\"\n",
        "cfg_arch_int": b"[net]\narch = 5\n",
        "cfg_bias_str": b"[net]\nbias = \"yes\"\n",
        "cfg_gap_bad": b"[gap]\nradius = -1.0\n",
    }
    for name, data in cfgs.items():
        (root / f"{name}.toml").write_bytes(data)
        f[name] = str(root / f"{name}.toml")
    (root / "cfgdir.toml").mkdir()
    f["cfgdir"] = str(root / "cfgdir.toml")
    # certificates
    certs = {
        "cert_notjson": b"this is not json",
        "cert_array": b"[1, 2, 3]",
        "cert_latin1": '{"a": "\xe9"}'.encode("latin-1"),
        "cert_nan": b'{"gap": {"upper": NaN}}',
        "cert_empty_obj": b"{}",
        "cert_deep": b"[" * 100000 + b"]" * 100000,
        "cert_empty": b"",
    }
    for name, data in certs.items():
        (root / f"{name}.json").write_bytes(data)
        f[name] = str(root / f"{name}.json")
    (root / "certdir.json").mkdir()
    f["certdir"] = str(root / "certdir.json")
    # run folders
    (root / "run_empty").mkdir()
    f["run_empty"] = str(root / "run_empty")
    (root / "run_badcfg").mkdir()
    (root / "run_badcfg" / "config.json").write_text("{not json")
    (root / "run_badcfg" / "results.sqlite").write_bytes(b"not a database")
    f["run_badcfg"] = str(root / "run_badcfg")
    # data sources
    (root / "idx_empty").mkdir()
    f["idx_empty"] = str(root / "idx_empty")
    bomb = root / "idx_bomb"
    bomb.mkdir()
    member = gzip.compress(b"\x00" * (1 << 24), compresslevel=9)  # 16 MiB of zeros in ~16 KiB
    for name in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
                 "t10k-labels-idx1-ubyte"):
        (bomb / f"{name}.gz").write_bytes(member * 64)  # 1 GiB once decompressed
    f["idx_bomb"] = str(bomb)
    junk = root / "idx_junk"
    junk.mkdir()
    for name in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
                 "t10k-labels-idx1-ubyte"):
        (junk / name).write_bytes(b"\x00\x00\x08\x03junk")
    f["idx_junk"] = str(junk)
    badgz = root / "idx_badgz"
    badgz.mkdir()
    for name in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
                 "t10k-labels-idx1-ubyte"):
        (badgz / f"{name}.gz").write_bytes(b"\x1f\x8b\x08\x00garbage")
    f["idx_badgz"] = str(badgz)
    return f


def expand(argv: list[str], files: dict[str, str]) -> list[str]:
    """Fill ``{name}`` placeholders with fixture paths."""
    return [re.sub(r"\{(\w+)\}", lambda m: files[m.group(1)], a) for a in argv]


# --------------------------------------------------------------------------- the table

BIG = "1180591620717411303424"  # 2**70: no SQLite INTEGER holds it
HUGE = "9" * 5000  # more digits than Python's int() accepts by default


def _prune_cases() -> list[Case]:
    base = ["prune", "--arch", "fcn:3,4,2", "--law", "uniform", "--prune-fraction", "0.5"]
    w = ["prune", "--arch", "fcn:3,4,2", "--prune-fraction", "0.5", "--weights"]
    cases: list[Case] = [
        ("prune-bogus", [*base, "--bogus"], "--bogus"),
        ("prune-positional", [*base, "extra"], "extra"),
        ("prune-no-arch", ["prune", "--law", "uniform", "--prune-fraction", "0.5"], "--arch"),
        ("prune-arch-novalue", ["prune", "--arch"], "--arch"),
        ("prune-flag-value", [*base, "--bias=yes"], "--bias"),
        ("prune-seed-float", [*base, "--seed", "1.5"], "--seed.*1.5"),
        ("prune-seed-text", [*base, "--seed", "abc"], "--seed.*abc"),
        ("prune-seed-empty", [*base, "--seed", ""], "--seed"),
        ("prune-seed-neg", [*base, "--seed", "-1"], "seed"),
        ("prune-seed-big", [*base, "--seed", BIG], "seed"),
        ("prune-seed-huge", [*base, "--seed", HUGE], "seed"),
        ("prune-pf-text", ["prune", "--arch", "fcn:3,4,2", "--law", "uniform", "--prune-fraction", "abc"],
         "--prune-fraction.*abc"),
        ("prune-no-level", ["prune", "--arch", "fcn:3,4,2", "--law", "uniform"], "level"),
        ("prune-no-source", ["prune", "--arch", "fcn:3,4,2", "--prune-fraction", "0.5"], "--weights"),
        ("prune-two-levels", [*base, "--threshold", "0.1"], "threshold"),
        ("prune-p-magnitude", [*base[:-2], "--p", "0.5"], "p=0.5"),
        ("prune-rescale-magnitude", [*base, "--rescale"], "rescale"),
        ("prune-rel-no-law", [*w[:-1], "--relative-threshold", "0.1", "--weights", "{t}"], "relative_threshold"),
        ("prune-save-target-weights", [*w, "{t}", "--save-target", "t.safetensors"], "save_target"),
        ("prune-delta-no-cert", [*base, "--delta", "0.1"], "delta"),
        ("prune-delta-tiny", [*base, "--certificate", "c.json", "--delta", "5e-324"], "delta"),
        ("prune-delta-one", [*base, "--certificate", "c.json", "--delta", "1"], "delta"),
        ("prune-cert-suffix", [*base, "--certificate", "c.txt"], "certificate"),
        ("prune-cert-dir", [*base, "--certificate", "{certdir}"], "certificate|director"),
        ("prune-cert-proc", [*base, "--certificate", "/proc/c.json"], "certificate|/proc"),
        ("prune-cert-noparent", [*base, "--certificate", "{nowhere}/c.json"], "certificate|folder|director"),
        ("prune-out-suffix", [*base, "--out", "x.pt"], "out"),
        ("prune-out-dir", [*base, "--out", "{dirst}"], "out|director"),
        ("prune-out-proc", [*base, "--out", "/proc/x.safetensors"], "out|/proc"),
        ("prune-out-noparent", [*base, "--out", "{nowhere}/x.safetensors"], "out|folder|director"),
        ("prune-out-ok-target-proc", [*base, "--out", "ok.safetensors", "--save-target", "/proc/t.safetensors"],
         "save_target|/proc"),
        ("prune-out-ok-target-dir", [*base, "--out", "ok.safetensors", "--save-target", "{dirst}"],
         "save_target|director"),
        ("prune-out-ok-cert-proc", [*base, "--out", "ok.safetensors", "--certificate", "/proc/c.json"],
         "certificate|/proc"),
        ("prune-out-same-target", [*base, "--out", "a.safetensors", "--save-target", "a.safetensors"], "same"),
        ("prune-huge-arch", ["prune", "--arch", "fcn:8,100000,100000,100000,2", "--law", "uniform",
                             "--prune-fraction", "0.5"], "memory"),
        ("prune-huge-width", ["prune", "--arch", "fcn:99999999999999999999,2", "--law", "uniform",
                              "--prune-fraction", "0.5"], "memory"),
        ("prune-huge-cnn", ["prune", "--arch", "cnn:3x4096x4096,c512k3,c512k3,10", "--law", "uniform",
                            "--prune-fraction", "0.5"], "memory"),
        ("prune-gap-radius-0", [*base, "--gap", "--radius", "0"], "radius"),
        ("prune-gap-radius-nan", [*base, "--gap", "--radius", "nan"], "radius"),
        ("prune-gap-radius-inf", [*base, "--gap", "--radius", "inf"], "radius"),
        ("prune-gap-radius-neg", [*base, "--gap", "--radius", "-1"], "radius"),
        ("prune-gap-radius-text", [*base, "--gap", "--radius", "r"], "--radius"),
        ("prune-gap-radius-overflow", [*base, "--gap", "--radius", "1e300", "--out", "o.safetensors"],
         "radius.*overflow"),
    ]
    for arch, frag in (("fcn:", "widths|arch"), ("fcn:3", "widths"), ("fcn:a,b", "arch"), ("fcn:3,-1,2", "widths"),
                       ("fcn:3,0,2", "widths"), ("xyz:3,4", "arch"), ("3,4,2", "arch"), ("cnn:", "arch"),
                       ("cnn:1x28", "input_shape|arch"), ("cnn:1x8x8", "convs|arch"),
                       ("cnn:1x8x8,c0k3,10", "out_channels"), ("cnn:1x4x4,c2k9p0,3", "empty"),
                       ("cnn:1x28x28,cXk5,10", "conv|arch"), ("cnn:1x8x8,c2k3m9,4", "pool|empty"),
                       ("cnn:0x8x8,c2k3,4", "input_shape"), ("fcn:3,4,2,", None), ("", "arch"), (":", "arch"),
                       ("fcn:1e3,2", "arch"), ("fcn:3,,,", "widths")):
        if frag is None:
            continue
        cases.append((f"prune-arch-{arch or 'empty'}", ["prune", "--arch", arch, "--law", "uniform",
                                                          "--prune-fraction", "0.5"], frag))
    for law, frag in (("bogus", "law"), ("uniform:K=abc", "law"), ("uniform:K=-1", "scale"),
                      ("uniform:K=0", "scale"), ("uniform:K=nan", "scale"), ("uniform:K=inf", "scale"),
                      ("uniform:K=1e300", "scale|overflow|law"), ("uniform:X=1", "law"), ("gaussian:K=", "law"),
                      ("uniform:K=1e400", "scale")):
        cases.append((f"prune-law-{law}", ["prune", "--arch", "fcn:3,4,2", "--law", law, "--prune-fraction",
                                           "0.5", "--gap"], frag))
    for opt, vals, frag in (
        ("--method", ["bogus", "", "MAGNITUDE"], "method"),
        ("--scope", ["bogus", "Global"], "scope"),
        ("--activation", ["bogus", "gelu", ""], "activation"),
        ("--prune-fraction", ["-0.1", "1.5", "nan", "inf", "-inf", "1e400"], "prune_fraction"),
    ):
        for v in vals:
            argv = ["prune", "--arch", "fcn:3,4,2", "--law", "uniform", opt, v]
            if opt != "--prune-fraction":
                argv += ["--prune-fraction", "0.5"]
            cases.append((f"prune{opt}={v}", argv, frag))
    for v, frag in (("-1", "threshold"), ("nan", "threshold"), ("inf", "threshold"), ("x", "--threshold")):
        cases.append((f"prune-threshold={v}", ["prune", "--arch", "fcn:3,4,2", "--law", "uniform", "--threshold", v],
                       frag))
    for v, frag in (("-0.5", "p="), ("1.5", "p="), ("nan", "p="), ("x", "--p")):
        cases.append((f"prune-p={v}", ["prune", "--arch", "fcn:3,4,2", "--law", "uniform", "--method", "random",
                                       "--p", v], frag))
    for dev in ("tpu", "meta", "cuda:x", "", "cpu:0", "cuda:99", "xla", "CPU"):
        cases.append((f"prune-device={dev}", [*base, "--device", dev], "device"))
    for name, frag in (("i32", "dtype|int"), ("i64", "dtype|int"), ("u8", "dtype|uint8"), ("bool", "dtype|bool"),
                       ("f16", "dtype|float16"), ("bf16", "dtype|bfloat16"), ("c64", "dtype|complex"),
                       ("nan", "non-finite"), ("inf", "non-finite"), ("shape", "shape"), ("missing_t", "missing"),
                       ("extra_t", "belong"), ("meta", "architecture"), ("garbage", "safetensors"),
                       ("empty", "safetensors"), ("hugehdr", "safetensors"), ("dirst", "not found|director"),
                       ("dir", "not found|director|safetensors")):
        cases.append((f"prune-weights-{name}", [*w, f"{{{name}}}", "--out", "o.safetensors"], frag))
    cases.append(("prune-weights-missing", [*w, "nope.safetensors"], "not found"))
    for opt in ("--out", "--save-target", "--certificate"):
        suffix = ".json" if opt == "--certificate" else ".safetensors"
        cases.append((f"prune{opt}-nul", [*base, opt, "a\x00b" + suffix], "NUL|null"))
    cases.append(("prune-weights-nul", [*w, "a\x00b.safetensors"], "null|NUL|not found"))
    cases.append(("prune-json-error", [*base, "--seed", "-3", "--json"], "seed"))
    return cases


def _gap_cases() -> list[Case]:
    base = ["gap", "--arch", "fcn:3,4,2", "--weights", "{t}", "--pruned", "{p}"]
    cases: list[Case] = [
        ("gap-no-weights", ["gap", "--arch", "fcn:3,4,2", "--pruned", "{p}"], "--weights"),
        ("gap-no-pruned", ["gap", "--arch", "fcn:3,4,2", "--weights", "{t}"], "--pruned"),
        ("gap-no-arch", ["gap", "--weights", "{t}", "--pruned", "{p}"], "--arch"),
        ("gap-bogus", [*base, "--bogus"], "--bogus"),
        ("gap-arch-mismatch", ["gap", "--arch", "fcn:3,5,2", "--weights", "{t}", "--pruned", "{p}"],
         "architecture|shape"),
        ("gap-weights-suffix", ["gap", "--arch", "fcn:3,4,2", "--weights", "{file}", "--pruned", "{p}"], "weights"),
        ("gap-pruned-missing", ["gap", "--arch", "fcn:3,4,2", "--weights", "{t}", "--pruned", "x.safetensors"],
         "not found"),
        ("gap-n-points-1e10", [*base, "--n-points", "1e10"], "--n-points"),
        ("gap-n-points-10e9", [*base, "--n-points", "10000000000"], "memory"),
        ("gap-n-points-huge", [*base, "--n-points", HUGE], "n-points|n_points"),
        ("gap-n-steps-big", [*base, "--n-steps", "1000000000000"], "n_steps|time"),
        ("gap-json-error", [*base, "--radius", "-1", "--json"], "radius"),
        ("gap-radius-overflow", [*base, "--radius", "1e300", "--json"], "radius.*overflow"),
    ]
    for opt, vals, frag in (
        ("--n-points", ["0", "-1", "abc", "1.5", ""], "n[-_]points"),
        ("--n-restarts", ["-1", "x"], "n[-_]restarts"),
        ("--n-steps", ["-1", "x"], "n[-_]steps"),
        ("--step-size", ["0", "-1", "nan", "inf", "x"], "step[-_]size"),
        ("--radius", ["0", "-1", "nan", "inf", "-inf", "1e400", "x"], "radius"),
        ("--norm-method", ["bogus", "", "SVD"], "norm_method"),
        ("--seed", ["-1", BIG, "x"], "seed"),
        ("--activation", ["bogus"], "activation"),
        ("--device", ["tpu", "meta", "cuda:x", "cuda:99", ""], "device"),
    ):
        for v in vals:
            cases.append((f"gap{opt}={v}", [*base, opt, v], frag))
    for role in ("weights", "pruned"):
        for name, frag in (("i32", "dtype|int"), ("i64", "dtype|int"), ("u8", "dtype|uint8"), ("bool", "dtype|bool"),
                           ("f16", "dtype|float16"), ("bf16", "dtype|bfloat16"), ("c64", "dtype|complex"),
                           ("nan", "non-finite"), ("inf", "non-finite"), ("shape", "shape"),
                           ("missing_t", "missing"), ("extra_t", "belong"), ("garbage", "safetensors"),
                           ("empty", "safetensors"), ("hugehdr", "safetensors"), ("dirst", "not found|director")):
            argv = list(base)
            argv[argv.index(f"--{role}") + 1] = f"{{{name}}}"
            cases.append((f"gap-{role}-{name}", argv, frag))
    return cases


def _bound_cases() -> list[Case]:
    base = ["bound", "--arch", "fcn:16,2048,2048,4", "--relative-threshold", "0.1"]
    cases: list[Case] = [
        ("bound-bogus", [*base, "--bogus"], "--bogus"),
        ("bound-no-arch", ["bound", "--relative-threshold", "0.1"], "--arch"),
        ("bound-no-level", ["bound", "--arch", "fcn:16,2048,2048,4"], "level"),
        ("bound-solve-bogus", [*base, "--solve", "bogus"], "solve"),
        ("bound-solve-no-eps", ["bound", "--arch", "fcn:16,2048,2048,4", "--solve", "max-prune"], "eps"),
        ("bound-max-prune-level", [*base, "--solve", "max-prune", "--eps", "1"], "level"),
        ("bound-alpha-no-c", [*base[:-2], "--alpha", "0.5"], "alpha"),
        ("bound-c-no-alpha", [*base[:-2], "--c", "1"], "alpha"),
        ("bound-theorem-bogus", [*base, "--theorem", "bogus"], "theorem"),
        ("bound-sigmoid", [*base, "--activation", "sigmoid"], "σ|sigma|activation"),
        ("bound-activation-bogus", [*base, "--activation", "bogus"], "activation"),
        ("bound-method-bogus", [*base, "--method", "bogus"], "method"),
        ("bound-p-magnitude", [*base[:-2], "--p", "0.1"], "p="),
        ("bound-pf-random", [*base[:-2], "--method", "random", "--prune-fraction", "0.5"], "prune_fraction|random"),
        ("bound-narrow", ["bound", "--arch", "fcn:16,4,4", "--relative-threshold", "0.1"], "width"),
        ("bound-min-width-cnn", ["bound", "--arch", "cnn:1x8x8,c4k3,10", "--relative-threshold", "0.1",
                                 "--solve", "min-width", "--eps", "1"], "min-width|fcn|FCN|cnn"),
        ("bound-json-error", [*base, "--delta", "0", "--json"], "delta"),
        ("bound-huge-arch", ["bound", "--arch", "fcn:16," + HUGE + ",4", "--relative-threshold", "0.1"],
         "arch|widths|digits"),
    ]
    for opt, vals, frag in (
        ("--delta", ["0", "1", "-0.5", "nan", "inf", "x", "1.5", "5e-324", "1e-320", "1e-400"], "delta"),
        ("--radius", ["0", "-1", "nan", "inf", "x", "1e309"], "radius"),
        ("--relative-threshold", ["-1", "nan", "inf", "x"], "relative[-_]threshold"),
        ("--threshold", ["-1", "nan"], "threshold"),
    ):
        for v in vals:
            argv = [*base, opt, v] if opt not in ("--relative-threshold", "--threshold") else [*base[:-2], opt, v]
            cases.append((f"bound{opt}={v}", argv, frag))
    for law, frag in (("bogus", "law"), ("uniform:K=1e300", "scale|overflow|law"), ("uniform:K=1e308", "scale|law"),
                      ("uniform:K=nan", "scale"), ("uniform:K=-2", "scale"), ("gaussian:K=1e300", "scale|law")):
        cases.append((f"bound-law-{law}", [*base, "--law", law], frag))
    for eps in ("0", "-1", "nan", "inf", "x"):
        cases.append((f"bound-eps={eps}", ["bound", "--arch", "fcn:16,2048,2048,4", "--solve", "max-prune",
                                            "--eps", eps], "eps"))
    sched = ["bound", "--arch", "fcn:16,2048,2048,4", "--solve", "min-width", "--eps", "1"]
    for c, alpha, frag in (("1", "0", "alpha"), ("1", "1", "alpha"), ("1", "nan", "alpha"), ("0", "0.5", "c"),
                           ("-1", "0.5", "c"), ("nan", "0.5", "c"), ("1e308", "0.5", "c|schedule|overflow"),
                           ("1e300", "0.999", "c|schedule|overflow"), ("1e-320", "0.5", "c|schedule"),
                           ("x", "0.5", "--c")):
        cases.append((f"bound-schedule-{c},{alpha}", [*sched, "--c", c, "--alpha", alpha], frag))
        # the one spelling of every command: the same values through --schedule c,alpha
        cases.append((f"bound-schedule-flag-{c},{alpha}", [*sched, "--schedule", f"{c},{alpha}"],
                      frag.replace("--c", "--schedule")))
    return cases


def _verify_cases() -> list[Case]:
    base = ["verify", "--arch", "fcn:4,8,2", "--trials", "2", "--runs-dir", "runs"]
    cases: list[Case] = [
        ("verify-bogus", [*base, "--bogus"], "--bogus"),
        ("verify-trials-0", [*base, "--trials", "0"], "n_trials"),
        ("verify-trials-neg", [*base, "--trials", "-1"], "n_trials"),
        ("verify-trials-text", [*base, "--trials", "x"], "--trials"),
        ("verify-trials-1e9", [*base, "--trials", "1000000000"], "n_trials|time|memory"),
        ("verify-trials-huge", [*base, "--trials", HUGE], "trials"),
        ("verify-widths-empty", [*base, "--widths", ""], "widths"),
        ("verify-widths-text", [*base, "--widths", "a,b"], "widths"),
        ("verify-widths-0", [*base, "--widths", "0"], "widths"),
        ("verify-widths-neg", [*base, "--widths", "-3"], "widths"),
        ("verify-widths-100000", ["verify", "--widths", "100000", "--runs-dir", "runs"], "memory"),
        ("verify-widths-huge", [*base, "--widths", HUGE], "widths"),
        ("verify-chunk-0", [*base, "--chunk-size", "0"], "chunk_size"),
        ("verify-seed-neg", [*base, "--seed", "-1"], "seed"),
        ("verify-seed-big", [*base, "--seed", BIG], "seed"),
        ("verify-seed-2p63", [*base, "--seed", str(2 ** 63)], "seed"),
        ("verify-seed-text", [*base, "--seed", "x"], "--seed"),
        ("verify-dtype", [*base, "--dtype", "float16"], "dtype"),
        ("verify-matmul", [*base, "--matmul", "bogus"], "matmul"),
        ("verify-matmul-f64", [*base, "--matmul", "tf32", "--dtype", "float64"], "matmul"),
        ("verify-delta-0", [*base, "--delta", "0"], "delta"),
        ("verify-delta-1", [*base, "--delta", "1"], "delta"),
        ("verify-delta-nan", [*base, "--delta", "nan"], "delta"),
        ("verify-delta-subnormal", [*base, "--delta", "1e-310"], "delta.*underflow"),
        ("verify-eps-0", [*base, "--eps", "0"], "eps"),
        ("verify-eps-inf", [*base, "--eps", "inf"], "eps"),
        ("verify-schedule-a", [*base, "--schedule", "a"], "schedule"),
        ("verify-schedule-1", [*base, "--schedule", "1"], "schedule"),
        ("verify-schedule-alpha2", [*base, "--schedule", "1,2"], "schedule_alpha"),
        ("verify-schedule-c0", [*base, "--schedule", "0,0.5"], "schedule_c"),
        ("verify-schedule-inf", [*base, "--schedule", "inf,0.5"], "schedule"),
        ("verify-law", [*base, "--law", "bogus"], "law"),
        ("verify-law-big", [*base, "--law", "uniform:K=1e300"], "scale|law"),
        ("verify-law-big-f64", [*base, "--law", "uniform:K=1e300", "--dtype", "float64"], "scale|law"),
        ("verify-method", [*base, "--method", "bogus"], "method"),
        ("verify-scope", [*base, "--scope", "bogus"], "scope"),
        ("verify-pf", [*base, "--prune-fraction", "2"], "prune_fraction"),
        ("verify-p", [*base, "--p", "2"], "p="),
        ("verify-threshold", [*base, "--threshold", "-1"], "threshold"),
        ("verify-arch", ["verify", "--arch", "fcn:a", "--runs-dir", "runs"], "arch"),
        ("verify-runs-dir-file", [*base[:-2], "--runs-dir", "{file}"], "runs[-_]dir|director"),
        ("verify-runs-dir-proc", [*base[:-2], "--runs-dir", "/proc/runs"], "runs[-_]dir|/proc"),
        ("verify-runs-dir-nul", [*base[:-2], "--runs-dir", "a\x00b"], "NUL"),
        ("verify-resume-missing", [*base, "--resume", "nope"], "resume|run"),
        ("verify-resume-file", [*base, "--resume", "{file}"], "resume|run"),
        ("verify-resume-empty", [*base, "--resume", "{run_empty}"], "resume|run"),
        ("verify-resume-badcfg", ["verify", "--resume", "{run_badcfg}", "--runs-dir", "runs"], "config|run"),
        ("verify-resume-and-config", ["verify", "--resume", "{run_empty}", "--config", "{cfg_key}"], "--config"),
        ("verify-executor", [*base, "--executor", "bogus"], "executor"),
        ("verify-json-error", [*base, "--trials", "0", "--json"], "n_trials"),
    ]
    for dev in ("tpu", "meta", "cuda:x", "", "xla:0"):
        cases.append((f"verify-device={dev}", [*base, "--device", dev], "device"))
    if not torch.cuda.is_available():
        cases.append(("verify-device=cuda", [*base, "--device", "cuda"], "device|CUDA"))
        cases.append(("prune-device=cuda", ["prune", "--arch", "fcn:3,4,2", "--law", "uniform", "--prune-fraction",
                                            "0.5", "--device", "cuda"], "device|CUDA"))
        cases.append(("gap-device=cuda", ["gap", "--arch", "fcn:3,4,2", "--weights", "{t}", "--pruned", "{p}",
                                          "--device", "cuda"], "device|CUDA"))
    for cmd in (["verify", "--runs-dir", "runs"], ["config", "show"]):
        tag = cmd[0]
        for name, frag in (("cfg_latin1", "UTF-8|utf-8|decode"), ("cfg_badtoml", "TOML"),
                           ("cfg_convs5", "convs"), ("cfg_convs_str", "convs"), ("cfg_widths_str", "widths"),
                           ("cfg_widths_float", "widths"), ("cfg_section", "bogus"), ("cfg_key", "bogus"),
                           ("cfg_seed_big", "n_trials|seed"), ("cfg_seed_neg", "seed"), ("cfg_device", "device"),
                           ("cfg_net_scalar", "net"), ("cfg_prunes_scalar", "prunes"), ("cfg_prunes_bad", "p="),
                           ("cfg_law_inf", "scale"), ("cfg_delta", "delta"), ("cfg_array_top", "x"),
                           ("cfg_arch_bad", "arch"), ("cfg_arch_int", "arch"), ("cfg_bias_str", "bias"),
                           ("cfg_gap_bad", "radius"), ("cfgdir", "director|config"), ("nowhere", "not found"),
                           ("devzero", "regular file")):
            cases.append((f"{tag}-config-{name}", [*cmd, "--config", f"{{{name}}}"], frag))
        for s, frag in (("mc.n_trials", "--set"), ("mc.n_trials=", "n_trials"), ("bogus.x=1", "bogus"),
                        ("mc.bogus=1", "bogus"), ("mc.seed=" + HUGE, "seed|digits"), ("mc.seed=" + BIG, "seed"),
                        ("mc.seed=-1", "seed"), ("mc.seed=1.5", "seed"), ("mc.seed=1e400", "seed"),
                        ("mc.n_trials=\"x\"", "n_trials"), ("net.arch=fcn:a", "arch"), ("net.arch=5", "arch"),
                        ("prunes.9.p=0.1", "prunes|9"), ("prunes.x.p=0.1", "prunes|x"), ("mc.device=tpu", "device"),
                        ("net.widths=[1e999]", "widths"), ("net.widths=5", "widths"), ("=1", "--set"),
                        ("mc.n_trials.x=1", "n_trials|--set"), ("net.widths=[[1]]", "widths"),
                        ("net.convs=5", "convs"), ("law.scale=NaN", "scale"), ("mc.n_trials=Infinity", "n_trials"),
                        ("net.arch", "--set")):
            cases.append((f"{tag}-set-{s[:40]}", [*cmd, "--set", s], frag))
    cases.append(("config-show-bogus", ["config", "show", "--bogus"], "--bogus"))
    cases.append(("config-bogus", ["config", "bogus"], "bogus"))
    return cases


def _other_cases() -> list[Case]:
    cases: list[Case] = [
        ("root-bogus-option", ["--bogus"], "--bogus"),
        ("root-bogus-command", ["bogus"], "bogus"),
        ("root-no-command", [], "command"),
        ("data-no-command", ["data"], "command"),
        ("data-bogus", ["data", "bogus"], "bogus"),
        # `data prepare` alone prepares every dataset it can (issue 17); with --from it must name the dataset
        ("data-prepare-from-unnamed", ["data", "prepare", "--from", "{idx_empty}"], "name it"),
        ("data-prepare-bogus", ["data", "prepare", "bogus", "--from", "{idx_empty}"], "dataset"),
        ("data-prepare-from-missing", ["data", "prepare", "mnist", "--from", "{nowhere}"], "not a directory|--from"),
        ("data-prepare-from-file", ["data", "prepare", "mnist", "--from", "{file}"], "not a directory|--from"),
        ("data-prepare-from-empty", ["data", "prepare", "mnist", "--from", "{idx_empty}"], "missing"),
        ("data-prepare-from-junk", ["data", "prepare", "mnist", "--from", "{idx_junk}"], "IDX|idx|truncated"),
        ("data-prepare-from-badgz", ["data", "prepare", "mnist", "--from", "{idx_badgz}"], "gzip"),
        ("data-prepare-bomb", ["data", "prepare", "mnist", "--from", "{idx_bomb}"], "memory|larger|size"),
        ("data-prepare-fashion-bomb", ["data", "prepare", "fashion-mnist", "--from", "{idx_bomb}"],
         "memory|larger|size"),
        ("data-prepare-bogus-opt", ["data", "prepare", "mnist", "--bogus"], "--bogus"),
        ("data-info-bogus", ["data", "info", "--bogus"], "--bogus"),
        ("data-info-extra", ["data", "info", "extra"], "extra"),
        ("report-missing-arg", ["report"], "RUN_DIR|run_dir"),
        ("report-missing", ["report", "nope"], "nope"),
        ("report-file", ["report", "{file}"], "afile"),
        ("report-empty", ["report", "{run_empty}"], "run_empty"),
        ("report-badcfg", ["report", "{run_badcfg}"], "run_badcfg|config"),
        ("report-bogus", ["report", "{run_empty}", "--bogus"], "--bogus"),
        ("report-json-error", ["report", "nope", "--json"], "nope"),
        ("certificate-no-command", ["certificate"], "command"),
        ("certificate-bogus", ["certificate", "bogus"], "bogus"),
        ("certificate-check-no-arg", ["certificate", "check"], "CERT|cert"),
        ("certificate-check-no-weights", ["certificate", "check", "{cert_empty_obj}"], "--weights"),
        ("certificate-check-bogus", ["certificate", "check", "{cert_empty_obj}", "--weights", "{p}", "--bogus"],
         "--bogus"),
        ("certificate-check-json-error", ["certificate", "check", "nope.json", "--weights", "{p}", "--json"],
         "not found"),
    ]
    for name, frag in (("cert_notjson", "JSON"), ("cert_array", "certificate"), ("cert_latin1", "JSON|UTF"),
                       ("cert_nan", "certificate|NaN"), ("cert_empty_obj", "certificate"),
                       ("cert_deep", "certificate|JSON|deep"), ("cert_empty", "JSON"), ("certdir", "not found"),
                       ("nowhere", "not found")):
        cases.append((f"certificate-check-{name}", ["certificate", "check", f"{{{name}}}", "--weights", "{p}"], frag))
    ex = ["experiment", "mnist", "--quick", "--runs-dir", "runs"]
    cases += [
        ("experiment-no-dataset", ["experiment"], "DATASET|dataset"),
        ("experiment-bogus-dataset", ["experiment", "bogus"], "dataset"),
        ("experiment-bogus", [*ex, "--bogus"], "--bogus"),
        ("experiment-seeds-big", [*ex, "--seeds", BIG], "seed"),
        ("experiment-seeds-2p63", [*ex, "--seeds", str(2 ** 63)], "seed"),
        ("experiment-seeds-huge", [*ex, "--seeds", HUGE], "seed"),
        ("experiment-seeds-neg", [*ex, "--seeds", "-1"], "seed"),
        ("experiment-seeds-text", [*ex, "--seeds", "a,b"], "seed"),
        ("experiment-seeds-empty", [*ex, "--seeds", ""], "seed"),
        ("experiment-seeds-dup", [*ex, "--seeds", "1,1"], "seed"),
        ("experiment-epochs-neg", [*ex, "--epochs", "-1"], "epochs"),
        ("experiment-epochs-nan", [*ex, "--epochs", "nan"], "epochs"),
        ("experiment-epochs-inf", [*ex, "--epochs", "inf"], "epochs"),
        ("experiment-epochs-text", [*ex, "--epochs", "x"], "--epochs"),
        ("experiment-epochs-huge", [*ex, "--epochs", "1e12"], "epochs"),
        ("experiment-ft-neg", [*ex, "--finetune-epochs", "-1"], "finetune_epochs|finetune-epochs"),
        ("experiment-ft-nan", [*ex, "--finetune-epochs", "nan"], "finetune_epochs|finetune-epochs"),
        ("experiment-ftlr-nan", [*ex, "--finetune-lr", "nan"], "finetune_lr"),
        ("experiment-wd-neg", [*ex, "--weight-decay", "-1"], "weight_decay"),
        ("experiment-wd-inf", [*ex, "--weight-decay", "inf"], "weight_decay"),
        ("experiment-models", [*ex, "--models", "bogus"], "models"),
        ("experiment-models-empty", [*ex, "--models", ","], "models"),
        ("experiment-pf-1", [*ex, "--prune-fractions", "1.0"], "prune_fractions"),
        ("experiment-pf-big", [*ex, "--prune-fractions", "1.5"], "prune_fractions"),
        ("experiment-pf-nan", [*ex, "--prune-fractions", "nan"], "prune_fractions"),
        ("experiment-pf-text", [*ex, "--prune-fractions", "a"], "prune_fractions"),
        ("experiment-pf-empty", [*ex, "--prune-fractions", ""], "prune_fractions"),
        ("experiment-methods", [*ex, "--methods", "bogus"], "methods"),
        ("experiment-scopes", [*ex, "--scopes", "bogus"], "scopes"),
        ("experiment-threads-0", [*ex, "--threads", "0"], "threads"),
        ("experiment-threads-neg", [*ex, "--threads", "-2"], "threads"),
        ("experiment-threads-text", [*ex, "--threads", "x"], "--threads"),
        ("experiment-threads-big", [*ex, "--threads", "100000000"], "threads"),
        ("experiment-executor", [*ex, "--executor", "bogus"], "executor"),
        ("experiment-runs-dir-file", ["experiment", "mnist", "--quick", "--runs-dir", "{file}"],
         "runs[-_]dir|director|dataset"),
        ("experiment-not-prepared", ex, "prepare"),
        ("experiment-json-error", [*ex, "--seeds", "-1", "--json"], "seed"),
        ("experiment-markdown-error", [*ex, "--seeds", "-1", "--markdown"], "seed"),
    ]
    return cases


CASES: list[Case] = _prune_cases() + _gap_cases() + _bound_cases() + _verify_cases() + _other_cases()


# --------------------------------------------------------------------------- running


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    return build_fixtures(tmp_path_factory.mktemp("badinput"))


def run_in(cwd: Path, argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """Run the entry point in ``cwd`` (restored afterwards); (exit code, stdout, stderr)."""
    before = os.getcwd()
    os.chdir(cwd)
    try:
        try:
            main(argv)
            code = 0
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else 1
    finally:
        os.chdir(before)
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_error_line(code: int, err: str, fragment: str, where: Any) -> str:
    """Exit 2; stderr is exactly one line ``error: …`` holding ``fragment`` (a regex); no traceback."""
    assert "Traceback" not in err, (where, err)
    lines = err.splitlines()
    assert code == 2, (where, code, err)
    assert len(lines) == 1 and lines[0].startswith("error: "), (where, err)
    assert re.search(fragment, lines[0]), (where, fragment, lines[0])
    return lines[0]


def test_table_is_large_and_covers_every_command() -> None:
    assert len(CASES) >= 300, len(CASES)
    ids = [c[0] for c in CASES]
    assert len(set(ids)) == len(ids), [i for i in ids if ids.count(i) > 1]
    commands = {c[1][0] for c in CASES if c[1]} | {" ".join(c[1][:2]) for c in CASES if len(c[1]) > 1}
    for cmd in ("prune", "gap", "bound", "verify", "report", "data prepare", "data info", "experiment",
                "certificate check", "config show"):
        assert cmd in commands, cmd


@pytest.mark.parametrize(("argv", "fragment"), [pytest.param(c[1], c[2], id=c[0]) for c in CASES])
def test_bad_input(argv: list[str], fragment: str, files: dict[str, str], tmp_path: Path,
                   monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("PROBPRUNE_DATA", str(tmp_path / "data"))
    args = expand(argv, files)
    code, out, err = run_in(tmp_path, args, capsys)
    assert_one_error_line(code, err, fragment, args)
    if "--json" in args:
        assert out == "", out
    assert sorted(os.listdir(tmp_path)) == [], "files written"


# --------------------------------------------------------------------------- large input spaces (Hypothesis)

_NUMERIC_TEXT = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.integers(min_value=-(2 ** 80), max_value=2 ** 80).map(str),
    st.text(alphabet="0123456789.eE+-xnaif ", max_size=12),
    st.text(max_size=8),
)
_SETTINGS = settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def _strict_json(text: str) -> Any:
    def refuse(name: str) -> Any:
        raise ValueError(f"non-standard JSON constant {name}")
    return json.loads(text, parse_constant=refuse)


def _one_outcome(argv: list[str], capsys: pytest.CaptureFixture[str], tmp: Path, as_json: bool = False) -> int:
    """Either success (exit 0; under --json: strict JSON on stdout, nothing on stderr) or one error line, exit 2."""
    code, out, err = run_in(tmp, argv, capsys)
    assert code in (0, 2), (argv, code, err)
    if code == 2:
        assert_one_error_line(code, err, "", argv)
    elif as_json:
        _strict_json(out)
        assert err == "", (argv, err)
    return code


@_SETTINGS
@given(option=st.sampled_from(["--radius", "--delta", "--relative-threshold"]), value=_NUMERIC_TEXT)
def test_bound_numeric_options_fuzz(option: str, value: str, capsys: pytest.CaptureFixture[str],
                                    tmp_path: Path) -> None:
    argv = ["bound", "--arch", "fcn:4,64,64,2", "--json", option, value]
    if option != "--relative-threshold":
        argv += ["--relative-threshold", "0.1"]
    _one_outcome(argv, capsys, tmp_path, as_json=True)


@_SETTINGS
@given(option=st.sampled_from(["--prune-fraction", "--seed", "--radius", "--threshold"]), value=_NUMERIC_TEXT)
def test_prune_numeric_options_fuzz(option: str, value: str, capsys: pytest.CaptureFixture[str],
                                    tmp_path: Path) -> None:
    argv = ["prune", "--arch", "fcn:3,4,2", "--law", "uniform", "--dry-run", "--out", "o.safetensors", option, value]
    if option not in ("--prune-fraction", "--threshold"):
        argv += ["--prune-fraction", "0.5"]
    if option == "--radius":
        argv += ["--gap"]
    _one_outcome(argv, capsys, tmp_path)
    assert sorted(os.listdir(tmp_path)) == []


@_SETTINGS
@given(option=st.sampled_from(["--trials", "--seed", "--widths", "--chunk-size", "--delta", "--schedule"]),
       value=_NUMERIC_TEXT)
def test_verify_numeric_options_fuzz(option: str, value: str, capsys: pytest.CaptureFixture[str],
                                     tmp_path: Path) -> None:
    _one_outcome(["verify", "--arch", "fcn:4,8,2", "--runs-dir", "runs", "--dry-run", option, value], capsys, tmp_path)
    assert sorted(os.listdir(tmp_path)) == []


@_SETTINGS
@given(key=st.sampled_from(["mc.n_trials", "mc.seed", "net.widths", "law.scale", "gap.radius", "bound.delta",
                            "prunes.0.p", "net.convs", "mc.device", "net.arch", "mc.bogus"]),
       value=st.one_of(_NUMERIC_TEXT, st.text(alphabet='[]{}",:0123456789truefalsenull ', max_size=16)))
def test_config_set_fuzz(key: str, value: str, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    _one_outcome(["config", "show", "--json", "--set", f"{key}={value}"], capsys, tmp_path, as_json=True)


@_SETTINGS
@given(option=st.sampled_from(["--n-points", "--n-steps", "--step-size", "--seed"]), value=_NUMERIC_TEXT)
def test_gap_numeric_options_fuzz(option: str, value: str, files: dict[str, str], capsys: pytest.CaptureFixture[str],
                                  tmp_path: Path) -> None:
    argv = expand(["gap", "--arch", "fcn:3,4,2", "--weights", "{t}", "--pruned", "{p}", "--dry-run", option, value],
                  files)
    _one_outcome(argv, capsys, tmp_path)


# --------------------------------------------------------------------------- the pieces, directly


def test_help_and_version_exit_0(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    for argv in (["--help"], ["--version"], ["prune", "--help"], ["data", "prepare", "--help"],
                 ["certificate", "check", "--help"], ["config", "show", "--help"]):
        code, out, err = run_in(tmp_path, argv, capsys)
        assert code == 0 and out and err == "", (argv, code, err)
        if argv == ["--help"]:
            assert "PROBPRUNE_MEMORY_LIMIT" in out and "PROBPRUNE_TIME_LIMIT" in out


def test_bare_group_prints_help_then_one_error_line(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, out, err = run_in(tmp_path, ["data"], capsys)
    assert "prepare" in out and "info" in out
    assert_one_error_line(code, err, "probprune data: missing command", ["data"])


def test_json_success_leaves_stderr_empty(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, out, err = run_in(tmp_path, ["prune", "--arch", "fcn:3,4,2", "--law", "uniform", "--prune-fraction", "0.5",
                                       "--json"], capsys)
    assert code == 0 and err == ""
    assert _strict_json(out)["stats"]["total"]["size"] == 20


def test_emit_json_is_strict(capsys: pytest.CaptureFixture[str]) -> None:
    from probprune.cli.app import emit_json

    emit_json({"upper": float("inf"), "lower": float("-inf"), "ratio": [1.0, float("nan")], "n": 3})
    doc = _strict_json(capsys.readouterr().out)
    assert doc == {"upper": "inf", "lower": "-inf", "ratio": [1.0, "nan"], "n": 3}


def test_failed_certificate_leaves_no_output_behind(files: dict[str, str], capsys: pytest.CaptureFixture[str],
                                                    tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An error after the weights were written (here: the certificate) removes the files this command created."""
    import probprune.runner.certificate as runner_certificate

    def broken(*_a: Any, **_k: Any) -> Any:
        from probprune.config import ProbPruneError

        raise ProbPruneError("certificate: simulated failure")

    monkeypatch.setattr(runner_certificate, "make_certificate", broken)  # the command imports it when it runs
    code, _, err = run_in(tmp_path, ["prune", "--arch", "fcn:3,4,2", "--law", "uniform", "--prune-fraction", "0.5",
                                     "--out", "o.safetensors", "--save-target", "t.safetensors",
                                     "--certificate", "c.json"], capsys)
    assert_one_error_line(code, err, "simulated failure", "certificate")
    assert sorted(os.listdir(tmp_path)) == []


def test_memory_limit_env_is_read_and_named(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    from probprune.runner.prune import memory_limit

    monkeypatch.setenv("PROBPRUNE_MEMORY_LIMIT", "2K")
    assert memory_limit() == 2048
    argv = ["prune", "--arch", "fcn:16,64,4", "--law", "uniform", "--prune-fraction", "0.5"]
    code, _, err = run_in(tmp_path, argv, capsys)
    line = assert_one_error_line(code, err, "PROBPRUNE_MEMORY_LIMIT", argv)
    assert "about 20 KiB" in line and "limit of 2 KiB" in line  # the estimate (16 bytes × 1280 weights), the limit
    monkeypatch.setenv("PROBPRUNE_MEMORY_LIMIT", "lots")
    code, _, err = run_in(tmp_path, argv, capsys)
    assert_one_error_line(code, err, "PROBPRUNE_MEMORY_LIMIT='lots'", argv)
    monkeypatch.delenv("PROBPRUNE_MEMORY_LIMIT")
    assert memory_limit() == os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2


def test_time_limit_env(files: dict[str, str], capsys: pytest.CaptureFixture[str], tmp_path: Path,
                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PROBPRUNE_TIME_LIMIT", "1e-9")
    argv = expand(["gap", "--arch", "fcn:3,4,2", "--weights", "{t}", "--pruned", "{p}"], files)
    code, _, err = run_in(tmp_path, argv, capsys)
    assert_one_error_line(code, err, "would take about .* over the limit of 1e-09 s", argv)


def test_gunzip_capped() -> None:
    from probprune.config import ProbPruneError
    from probprune.runner.dataprep import gunzip_capped

    two = gzip.compress(b"abc") + gzip.compress(b"def")
    assert gunzip_capped(two, 6, "x") == gzip.decompress(two) == b"abcdef"
    with pytest.raises(ProbPruneError, match="more than 5 bytes"):
        gunzip_capped(two, 5, "x")
    with pytest.raises(ProbPruneError, match="corrupt gzip"):
        gunzip_capped(gzip.compress(b"abc" * 100)[:-10], 1000, "x")
    with pytest.raises(ProbPruneError, match="corrupt gzip"):
        gunzip_capped(b"\x1f\x8b\x08\x00garbage", 1000, "x")


def test_device_check() -> None:
    from probprune.config import ProbPruneError
    from probprune.runner.prune import check_device

    check_device("cpu")
    for bad in ("tpu", "meta", "cuda:x", "", "CPU", "xla", 0):
        with pytest.raises(ProbPruneError, match="device"):
            check_device(bad)
    if not torch.cuda.is_available():
        for bad in ("cuda", "cuda:0"):
            with pytest.raises(ProbPruneError, match="CUDA is not available"):
                check_device(bad)


# --------------------------------------------------------------------------- the installed entry point


@pytest.mark.parametrize(("argv", "fragment"), [
    (["--bogus"], "No such option: --bogus"),
    (["prune", "--arch", "fcn:3,4,2", "--law", "uniform", "--prune-fraction", "0.5", "--seed", "1.5", "--json"],
     "--seed.*1.5"),
])
def test_subprocess_entry_point(argv: list[str], fragment: str, tmp_path: Path) -> None:
    env = {**os.environ, "PROBPRUNE_DATA": str(tmp_path / "data")}
    res = subprocess.run([sys.executable, "-m", "probprune", *argv], capture_output=True, text=True, cwd=tmp_path,
                         env=env, timeout=120)
    assert_one_error_line(res.returncode, res.stderr, fragment, argv)
    assert res.stdout == ""
    assert sorted(os.listdir(tmp_path)) == []


def test_report_checks_both_outputs_first(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    """``summary.md`` that cannot be written (here: a folder) stops ``report`` before ``report.html`` is written."""
    from test_report_html import make_run

    run, _ = make_run(tmp_path)
    (run / "summary.md").mkdir()
    code, _, err = run_in(tmp_path, ["report", str(run)], capsys)
    assert_one_error_line(code, err, "summary.*directory", "report")
    assert not (run / "report.html").exists()


def test_data_folder_checked_before_any_source_is_read(files: dict[str, str], capsys: pytest.CaptureFixture[str],
                                                       tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PROBPRUNE_DATA", files["file"])  # a file, not a folder
    code, _, err = run_in(tmp_path, expand(["data", "prepare", "mnist", "--from", "{idx_bomb}"], files), capsys)
    assert_one_error_line(code, err, "data folder.*not a directory", "data")
