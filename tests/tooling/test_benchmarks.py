"""The benchmark suite end to end on the CPU (python -m benchmarks --quick), and the Markdown
renderer on its output. These check that every figure is produced, positive and consistent
with the raw timings, and that both sides computed the same thing. No timing is asserted."""
import json
import math
import os
import subprocess
import sys

import pytest

from _subprocess import ROOT  # (tests/: on sys.path under pytest, from conftest.py)
from benchmarks import configs as C  # (the repository root: pyproject's pytest pythonpath)
from benchmarks import report
from benchmarks.timing import summarize

RENDER = os.path.join(ROOT, "scripts", "render_perf_table.py")


def _run(args, timeout):
    # faulthandler: a crash in the child prints its traceback to the stderr the assertions show
    return subprocess.run([sys.executable, "-X", "faulthandler", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout)


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    proc = _run(["-m", "benchmarks", "--quick", "--device", "cpu", "--out", str(out)], timeout=1200)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    files = sorted(os.listdir(out))
    jsons = [f for f in files if f.endswith(".json")]
    assert len(jsons) == 1, files
    with open(out / jsons[0]) as f:
        doc = json.load(f)
    return out, jsons[0][:-len(".json")], doc, proc


def test_outputs_written(quick_run):
    out, stem, doc, proc = quick_run
    assert stem.startswith("fastrnn-bench_cpu-")  # device in the name, date after it
    assert doc["meta"]["date"].replace(":", "").replace("-", "") in stem
    with open(out / (stem + ".png"), "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    assert os.path.getsize(out / (stem + ".png")) > 10_000
    with open(out / (stem + ".txt")) as f:
        table = f.read()
    assert table.strip() in proc.stdout  # the same table went to stdout
    assert "[1/" in proc.stderr  # progress on stderr
    meta = doc["meta"]
    assert meta["complete"] and meta["quick"] and meta["device"] == "cpu"
    assert meta["threads"] >= 1 and meta["torch"] and meta["cpu_model"] and meta["device_name"]
    for key in ("cuda", "cudnn", "git_commit", "tf32", "plan"):
        assert key in meta


def test_cpu_and_kernel_recorded(quick_run):
    """The run says what CPU, ISA, library limits and micro-kernel its timings come from."""
    import torch

    _, _, doc, _ = quick_run
    cpu = doc["meta"]["cpu"]
    assert cpu["model"] == doc["meta"]["cpu_model"] and cpu["threads"] == doc["meta"]["threads"]
    assert cpu["persistent_kernel"] in ("avx512", "avx2", "baseline")
    assert cpu["persistent_kernel"] == torch.ops.fastrnn._cpu_persistent_kernel()  # same build, same CPU
    assert cpu["aten_cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    from benchmarks import envinfo

    if os.path.exists("/proc/cpuinfo"):
        assert cpu["vendor"] and set(cpu["isa"]) == set(envinfo.ISA_FLAGS)
    assert set(cpu["env"]) <= set(envinfo.CPU_ENV)
    for name, value in cpu["env"].items():
        assert os.environ.get(name) == value  # the child inherited this environment
    (peak,) = doc["meta"]["gemm_peak"].values()
    M, K, N = peak["shape"]
    assert peak["gflops"] == pytest.approx(2 * M * K * N / (peak["best_ms"] / 1e3) / 1e9, rel=1e-9)


def test_rates_and_paths_reported(quick_run):
    """Every timed case with GEMM work carries its flop count, each side's GFLOP/s from it and
    the fraction of the run's GEMM rate; fastrnn's side names the path each op ran."""
    _, _, doc, _ = quick_run
    peaks = doc["meta"]["gemm_peak"]
    for r in doc["results"]:
        if r["group"] == "memory":
            assert "flops" not in r
            continue
        assert r["flops"]["count"] > 0 and r["flops"]["formula"], r["name"]
        for name, impl in r["impls"].items():
            assert impl["gflops"] == pytest.approx(r["flops"]["count"] / (impl["value"] / 1e3) / 1e9, rel=1e-9)
            assert impl["peak_fraction"] == pytest.approx(impl["gflops"] / peaks[r["dtype"]]["gflops"], rel=1e-9)
        cell = r["cell"]
        ops = {f"{cell}_forward"} | ({f"{cell}_backward"} if r["mode"] in ("fwdbwd", "train_step") else set())
        paths = r["impls"]["fastrnn"]["paths"]
        assert set(paths) == ops, r["name"]
        for op, rec in paths.items():
            assert rec["path"].startswith("cpu."), (r["name"], op, rec)


def test_gemm_flop_count():
    from benchmarks.cases import rnn_gemm_flops

    # LSTM, 7 positions, I = 3, H = 5: forward 2*7*(4*5)*(3 + 5) = 2240; backward 2x that again
    assert rnn_gemm_flops("lstm", 7, 3, 5, 1, False) == 2240
    assert rnn_gemm_flops("lstm", 7, 3, 5, 1, True) == 3 * 2240
    # a second layer takes the H-wide output: + 2*7*20*(5 + 5)
    assert rnn_gemm_flops("lstm", 7, 3, 5, 2, False) == 2240 + 2800
    assert rnn_gemm_flops("gru", 7, 3, 5, 1, False) == 2 * 7 * 15 * 8


def test_add_rates_and_table_column():
    from benchmarks import report

    rec = {"name": "layer/x/lstm/fwd/fp32", "group": "layer", "config": "x", "cell": "lstm", "mode": "fwd",
           "dtype": "fp32", "shape": {"T": 1}, "unit": "ms", "baselines": ["torch.nn"],
           "impls": {"fastrnn": {"value": 2.0}, "torch.nn": {"value": 4.0}},
           "ratios": {"fastrnn/torch.nn": 0.5}, "flops": {"count": 10**9, "formula": "f"}}
    report.add_rates(rec, {"fp32": {"gflops": 1000.0}})
    assert rec["impls"]["fastrnn"]["gflops"] == pytest.approx(500.0)  # 1 GFLOP in 2 ms
    assert rec["impls"]["torch.nn"]["peak_fraction"] == pytest.approx(0.25)
    ((*_, rates, _),) = report.rows([rec])
    assert rates == "500.0 (50%) / 250.0 (25%)"
    memory = {"name": "m", "unit": "bytes", "impls": {"fastrnn": {"value": 1.0}}, "dtype": "fp32"}
    report.add_rates(memory, {"fp32": {"gflops": 1.0}})
    assert "gflops" not in memory["impls"]["fastrnn"]  # no flop count: nothing added


def _expected_names(meta):
    names = set()
    for d in meta["dtypes"]:
        for cfg in C.LAYER_CONFIGS:
            if cfg in meta["configs"]:
                for cell in meta["cells"]:
                    names |= {f"layer/{cfg}/{cell}/{mode}/{d}" for mode in ("fwd", "fwdtrain", "fwdbwd")}
                    names.add(f"memory/{cfg}/{cell}/saved/{d}")
        other = {"varlen": f"varlen/{C.VARLEN_BASE}/lstm/fwdbwd/{d}", "train": f"train/charlm/lstm/step/{d}",
                 "wdrop": f"wdrop/{C.WDROP.name}/lstm/fwdbwd/{d}",
                 "layernorm": f"layernorm/{C.LAYERNORM.name}/lstm/fwdbwd/{d}",
                 "generate": f"generate/charlm/lstm/char/{d}"}
        names |= {name for cfg, name in other.items() if cfg in meta["configs"]}
        if "zoneout" in meta["configs"]:
            names |= {f"zoneout/{C.ZONEOUT.name}/lstm/{mode}/{d}" for mode in ("fwdbwd", "fwd")}
        if "layernorm" in meta["configs"]:
            names.add(f"layernorm/{C.LAYERNORM.name}/lstm/fwd/{d}")
    return names


def test_every_case_present_and_sane(quick_run):
    _, _, doc, _ = quick_run
    results = doc["results"]
    assert not [r["name"] for r in results if "error" in r]
    assert {r["name"] for r in results} == _expected_names(doc["meta"])
    plan = doc["meta"]["plan"]
    for r in results:
        assert r["baselines"] and set(r["baselines"]) < set(r["impls"]) and "fastrnn" in r["impls"], r["name"]
        for name, impl in r["impls"].items():
            v = impl["value"]
            assert math.isfinite(v) and v > 0, (r["name"], name, v)
            if "ms" in impl:
                s = impl["ms"]
                assert s["min"] <= s["q1"] <= s["median"] <= s["q3"] <= s["max"], (r["name"], s)
                assert s["median"] == v
                assert plan["min_reps"] <= s["n"] <= plan["max_reps"]
        for b in r["baselines"]:
            ratio = r["ratios"][f"fastrnn/{b}"]
            assert ratio == pytest.approx(r["impls"]["fastrnn"]["value"] / r["impls"][b]["value"], rel=1e-12)


def test_both_sides_compute_the_same(quick_run):
    _, _, doc, _ = quick_run
    by = {r["name"]: r for r in doc["results"]}
    for r in doc["results"]:
        if r["group"] == "layer":
            assert r["check"]["max_abs_diff_y"] < 1e-4, r["name"]
            if r["mode"] == "fwdbwd":
                assert r["check"]["max_abs_diff_dx"] < 1e-4, r["name"]
        elif r["group"] == "varlen":
            assert r["check"]["max_abs_diff_y_vs_packed"] < 1e-4
            s = r["shape"]
            assert round(C.VARLEN_MIN_FRAC * s["T"]) <= s["lengths_min"] <= s["lengths_max"] <= s["T"]
            assert s["lengths_min"] < s["T"]  # really variable
        elif r["group"] == "wdrop":
            assert r["check"]["max_abs_diff_y_eval_vs_param"] < 1e-4, r["name"]
            assert r["check"]["max_abs_diff_y_eval_vs_plain"] < 1e-4, r["name"]
            assert r["check"]["mask_changes_y"], r["name"]
        elif r["group"] == "zoneout":
            assert r["check"]["max_abs_diff_y_eval_vs_loop"] < 1e-4, r["name"]
            assert r["check"]["zoneout_changes_eval_y"] and r["check"]["masks_change_y"], r["name"]
        elif r["group"] == "layernorm":
            assert r["check"]["max_abs_diff_y_vs_script"] < 1e-4, r["name"]
            if r["mode"] == "fwdbwd":
                assert r["check"]["max_abs_diff_dx_vs_script"] < 1e-4, r["name"]
        elif r["group"] == "memory":
            s = r["shape"]
            for impl in r["impls"].values():  # the output y alone is held until backward
                assert impl["value"] >= s["T"] * s["B"] * s["H"] * 4
    train = by["train/charlm/lstm/step/fp32"]
    assert train["check"]["loss_first_abs_diff"] < 1e-4
    for impl in train["impls"].values():
        assert impl["loss_last"] < impl["loss_first"] < train["check"]["loss_uniform"] + 0.5
        tokens = train["shape"]["B"] * train["shape"]["T"]
        assert impl["tokens_per_s"] == pytest.approx(tokens / (impl["value"] / 1e3), rel=1e-12)
    assert train["tokens_per_s_ratio"]["fastrnn/torch.nn"] == pytest.approx(1 / train["ratios"]["fastrnn/torch.nn"])
    gen = by["generate/charlm/lstm/char/fp32"]
    assert all(len(s) == min(80, gen["shape"]["chars"]) for s in gen["samples"].values())


def test_render_perf_table(quick_run, tmp_path):
    out, stem, doc, _ = quick_run
    path = str(out / (stem + ".json"))
    proc = _run([RENDER, path], timeout=600)
    assert proc.returncode == 0, proc.stderr
    rows = [line for line in proc.stdout.splitlines() if line.startswith("| ") and "---" not in line][1:]
    expected = [(r, b) for r in doc["results"] for b in r["baselines"]]
    assert len(rows) == len(expected)
    for line, (r, b) in zip(rows, expected):
        cols = [c.strip() for c in line.strip("|").split("|")]
        assert cols[2] == r["dtype"] and cols[4] == b
        assert cols[6] == f"{r['ratios'][f'fastrnn/{b}']:.3f}"
        if r["group"] != "memory":  # GFLOP/s (fraction of the GEMM rate) of both sides
            assert cols[7] == f"{report.rate_text(r['impls']['fastrnn'])} / {report.rate_text(r['impls'][b])}"
    assert doc["meta"]["device_name"] in proc.stdout and doc["meta"]["torch"] in proc.stdout

    # Newest-file lookup in a directory, and the README block rewrite.
    readme = tmp_path / "README.md"
    readme.write_text("# Title\n\nbefore\n<!-- perf-table:start -->\nold table\n<!-- perf-table:end -->\nafter\n")
    proc = _run([RENDER, "--dir", str(out), "--write", str(readme)], timeout=600)
    assert proc.returncode == 0, proc.stderr
    text = readme.read_text()
    assert "old table" not in text and text.startswith("# Title\n\nbefore\n<!-- perf-table:start -->\n")
    assert text.endswith("<!-- perf-table:end -->\nafter\n")
    assert proc.stdout.strip() in text

    bad = tmp_path / "NOMARKERS.md"
    bad.write_text("no markers here\n")
    proc = _run([RENDER, path, "--write", str(bad)], timeout=600)
    assert proc.returncode != 0 and "markers" in proc.stderr
    assert bad.read_text() == "no markers here\n"


def test_summarize():
    s = summarize([5.0, 1.0, 3.0, 2.0, 4.0])
    assert (s["min"], s["q1"], s["median"], s["q3"], s["max"], s["n"]) == (1.0, 2.0, 3.0, 4.0, 5.0, 5)


def test_bad_arguments_rejected():
    proc = _run(["-m", "benchmarks", "--configs", "nosuchconfig", "--device", "cpu"], timeout=600)
    assert proc.returncode == 2 and "nosuchconfig" in proc.stderr


def test_terminated_run_keeps_partial_results(tmp_path):
    """`timeout` (as in scripts/gpu_check.sh) sends SIGTERM: what was measured is still written,
    marked incomplete, and the exit code says the run failed. The char-LM job reads its text from
    a FIFO that nobody writes to, so the run waits there for the signal after the layer jobs:
    where it stops does not depend on how fast this machine is."""
    import signal
    import time

    fifo = tmp_path / "corpus.fifo"
    os.mkfifo(fifo)
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-m", "benchmarks", "--quick", "--device", "cpu", "--configs",
                             "small,train", "--corpus", str(fifo), "--out", str(out)], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    layer_jobs = 2 * 4  # lstm, gru x fwd, fwdtrain, fwdbwd, memory
    try:
        deadline = time.monotonic() + 600  # against a hang only
        while True:
            jsons = [p for p in out.iterdir() if p.suffix == ".json"] if out.exists() else []
            if jsons:
                with open(jsons[0]) as f:  # written atomically after every job
                    if len(json.load(f)["results"]) == layer_jobs:
                        break
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
            time.sleep(0.1)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 1, err[-3000:]
    (path,) = [p for p in out.iterdir() if p.suffix == ".json"]
    with open(path) as f:
        doc = json.load(f)
    assert doc["meta"]["complete"] is False and "interrupted" in err
    assert not [r for r in doc["results"] if "error" in r]
    names = {r["name"] for r in doc["results"]}
    assert names == _expected_names(doc["meta"]) - {"train/charlm/lstm/step/fp32"} and len(names) == layer_jobs


def test_benchmark_trains_the_demos_model_on_the_demos_text(quick_run):
    import fastrnn
    import torch
    from benchmarks import cases, corpus
    from examples import char_lm

    assert cases.CharLM is char_lm.CharLM
    ref, fast = cases.charlm_pair(20, dict(C.CHARLM, emb=8, H=12), torch.device("cpu"), torch.float32)
    assert type(ref) is type(fast) is char_lm.CharLM
    assert type(ref.rnn) is torch.nn.LSTM and isinstance(fast.rnn, fastrnn.LSTM)
    assert ref.rnn.num_layers == fast.rnn.num_layers == C.CHARLM["layers"]
    for k, v in ref.state_dict().items():
        assert torch.equal(v, fast.state_dict()[k]), k

    text, name = corpus.load_text()
    assert text == char_lm.load_text() and name == "pydoc_data.topics"
    # what the benchmark run above really trained on
    _, _, doc, _ = quick_run
    (train,) = [r for r in doc["results"] if r["group"] == "train"]
    assert train["corpus"] == {"name": name, "chars": len(text), "vocab": len(char_lm.build_vocab(text)),
                               "sha1": char_lm.text_hash(text)}
    assert train["shape"]["vocab"] == train["corpus"]["vocab"]
