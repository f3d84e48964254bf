"""Packaging and loading native modules: build, export, load with ctypes, run, and fail clearly.

Uses the hand-made lowered test net of ``native_testnet.py`` (TE kernels built once per process).
"""

import ctypes
import json
import os
import re
import subprocess
import sys
import threading

import numpy as np
import pytest

import native_testnet as nt
from qcompiler.codegen.package import build_module
from qcompiler.errors import ConfigError, ModelError, RuntimeInputError
from qcompiler.runtime.loader import QC_ERR_BUSY, load

TESTS = os.path.dirname(os.path.abspath(__file__))


@pytest.fixture(scope="module")
def built():
    return build_module(nt.make_lowered(), name="testnet")


@pytest.fixture(scope="module")
def exported(built, tmp_path_factory):
    return built.export(tmp_path_factory.mktemp("mod") / "testnet")


def _check(out, x, seed=0):
    ref = nt.reference(x, seed)
    assert set(out) == set(ref)
    for k in ref:
        assert out[k].dtype == np.float32 and out[k].shape == ref[k].shape
        np.testing.assert_allclose(out[k], ref[k], rtol=1e-5, atol=1e-5)


def test_export_writes_the_module_directory(exported, built):
    files = set()
    for root, _, names in os.walk(exported):
        files |= {os.path.relpath(os.path.join(root, n), exported) for n in names}
    assert {"libtestnet.so", "libtestnet.a", "testnet.h", "manifest.json"} <= files
    assert any(f.startswith("objects/kernel_") for f in files)
    manifest = json.loads(open(os.path.join(exported, "manifest.json")).read())
    assert manifest["inputs"] == [{"name": "x", "shape": [8, 32], "dtype": "float32", "nbytes": 1024}]
    assert [o["name"] for o in manifest["outputs"]] == ["logits", "h2"]
    assert manifest["memory"]["arena_bytes"] == built.arena_bytes > 0
    assert manifest["memory"]["arena_bytes"] < manifest["memory"]["intermediate_bytes"]
    assert [r["node"] for r in manifest["layers"]][:2] == ["fc1", "relu1"]
    assert manifest["versions"]["tvm"] and manifest["versions"]["qcompiler"]
    assert not re.search(r'"(timestamp|date|time|created|built_at)"', json.dumps(manifest))
    # only the entry points are exported: kernels and the runtime stay private to the library
    syms = subprocess.run(["nm", "-D", "--defined-only", os.path.join(exported, "libtestnet.so")],
                          capture_output=True, text=True, check=True).stdout.split()
    exported_names = [s for s in syms if s.startswith(("qc_", "__tvm", "TVM", "__TVM"))]
    assert exported_names and all(s.startswith("qc_testnet_") for s in exported_names)


def test_load_and_run_matches_reference(exported):
    net = load(exported, num_threads=1)
    assert [str(s) for s in net.inputs] == ["x: float32[8,32]"]
    assert [s.name for s in net.outputs] == ["logits", "h2"]
    x = nt.sample_input()
    _check(net.run({"x": x}), x)
    _check(net.run({"x": x}), x)          # the arena is reused across runs


def test_one_and_two_threads_agree(exported):
    x = nt.sample_input(5)
    one, two = load(exported, num_threads=1), load(exported, num_threads=2)
    assert (one.num_threads, two.num_threads) == (1, 2)
    a, b = one.run({"x": x}), two.run({"x": x})
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])
    _check(b, x)


def test_separate_models_run_concurrently(exported):
    models = [load(exported, num_threads=2) for _ in range(2)]
    xs = [nt.sample_input(s) for s in (11, 12)]
    errors = []

    def work(m, x):
        try:
            for _ in range(30):
                _check(m.run({"x": x}), x)
        except Exception as e:     # reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(m, x)) for m, x in zip(models, xs)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors


def test_compiled_module_run_convenience(built):
    x = nt.sample_input(3)
    _check(built.run({"x": x}), x)


def test_builds_are_byte_identical(built, tmp_path):
    again = build_module(nt.make_lowered(), name="testnet")
    assert sorted(again.files) == sorted(built.files)
    for rel in built.files:
        assert again.files[rel] == built.files[rel], rel


def test_bad_inputs_give_clear_errors(exported):
    net = load(exported, num_threads=1)
    x = nt.sample_input()
    cases = [
        ({}, "missing ['x']"),
        ({"x": x, "y": x}, "unknown ['y']"),
        ({"input": x}, "missing ['x']"),
        ({"x": x.astype(np.float64)}, "dtype float64, expected float32"),
        ({"x": x[:4]}, "shape [4, 32], expected [8, 32]"),
        ({"x": x.tolist()}, "must be a numpy array"),
        ([x], "takes a dict"),
    ]
    for feeds, msg in cases:
        with pytest.raises(RuntimeInputError, match=None) as info:
            net.run(feeds)
        assert msg in str(info.value), (msg, str(info.value))
        assert "x: float32[8,32]" in str(info.value) or "'x'" in str(info.value)
    # non-contiguous input is fine (copied), and the module still works after errors
    xt = np.asfortranarray(x)
    _check(net.run({"x": xt}), x)


def test_c_entry_point_checks_counts_sizes_and_pointers(exported):
    """Call the library directly: bad calls return error codes, never read out of bounds."""
    net = load(exported, num_threads=1)
    run, handle = net._fn["run"], net._handle
    x = nt.sample_input()
    outs = [np.empty((8, 16), np.float32), np.empty((8, 64), np.float32)]
    P = ctypes.c_void_p
    ins = (P * 1)(x.ctypes.data)
    optr = (P * 2)(*[o.ctypes.data for o in outs])
    good_in = (ctypes.c_size_t * 1)(1024)
    good_out = (ctypes.c_size_t * 2)(512, 2048)

    def err():
        return net._fn["last_error"](handle).decode()

    assert run(handle, 2, ins, good_in, 2, optr, good_out) == 1 and "expected inputs 1, got 2" in err()
    assert run(handle, 1, ins, good_in, 1, optr, good_out) == 1
    assert run(handle, 1, ins, (ctypes.c_size_t * 1)(1023), 2, optr, good_out) == 2
    assert "input" in err() and "1023 bytes, expected 1024" in err()
    assert run(handle, 1, ins, good_in, 2, optr, (ctypes.c_size_t * 2)(512, 4096)) == 2
    assert run(handle, 1, (P * 1)(None), good_in, 2, optr, good_out) == 1 and "is NULL" in err()
    assert run(handle, 1, None, good_in, 2, optr, good_out) == 1
    assert run(None, 1, ins, good_in, 2, optr, good_out) == 1
    assert run(handle, 1, ins, good_in, 2, optr, good_out) == 0 and err() == ""
    _check({"logits": outs[0], "h2": outs[1]}, x)


def test_misaligned_buffers_are_staged(exported):
    net = load(exported, num_threads=2)
    x = nt.sample_input(7)
    raw_in = np.zeros(1024 + 8, np.uint8)[4:4 + 1024]                # 4 bytes off alignment
    raw_in[:] = x.view(np.uint8).reshape(-1)
    raw_out = [np.zeros(n + 8, np.uint8)[4:4 + n] for n in (512, 2048)]
    P = ctypes.c_void_p
    rc = net._fn["run"](net._handle, 1, (P * 1)(raw_in.ctypes.data), (ctypes.c_size_t * 1)(1024), 2,
                        (P * 2)(*[o.ctypes.data for o in raw_out]), (ctypes.c_size_t * 2)(512, 2048))
    assert rc == 0
    _check({"logits": raw_out[0].view(np.float32).reshape(8, 16), "h2": raw_out[1].view(np.float32).reshape(8, 64)}, x)


def test_blob_weights(tmp_path):
    mod = build_module(nt.make_lowered(), name="testnet_blob", weights="blob")
    d = mod.export(tmp_path / "blob")
    assert os.path.isfile(os.path.join(d, "weights.bin"))
    assert mod.manifest["weights"]["mode"] == "blob"
    x = nt.sample_input()
    _check(load(d, num_threads=1).run({"x": x}), x)
    # a blob of the same net with other weights is refused, and so is a corrupted one
    other = build_module(nt.make_lowered(seed=4), name="testnet_blob", weights="blob")
    good = open(os.path.join(d, "weights.bin"), "rb").read()
    with open(os.path.join(d, "weights.bin"), "wb") as f:
        f.write(other.files["weights.bin"])
    with pytest.raises(ModelError, match="belongs to another module"):
        load(d)
    corrupt = bytearray(good)
    corrupt[100] ^= 0xFF
    with open(os.path.join(d, "weights.bin"), "wb") as f:
        f.write(bytes(corrupt))
    with pytest.raises(ModelError, match="corrupt"):
        load(d)
    os.remove(os.path.join(d, "weights.bin"))
    with pytest.raises(ModelError, match="cannot open weights file"):
        load(d)


def test_load_errors(tmp_path, exported):
    with pytest.raises(ModelError, match="does not exist"):
        load(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelError, match="no manifest.json"):
        load(tmp_path / "empty")
    with pytest.raises(RuntimeInputError, match="num_threads"):
        load(exported, num_threads=0)


def test_export_refuses_to_clobber_other_directories(built, tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match="not empty"):
        built.export(tmp_path)
    d = built.export(tmp_path / "m")
    built.export(d)                      # re-exporting over a module directory is fine


def test_bad_build_options():
    lowered = nt.make_lowered()
    with pytest.raises(ConfigError):
        build_module(lowered, name="not a name")
    with pytest.raises(ConfigError):
        build_module(lowered, name="ok", weights="inline")


def test_loading_needs_no_tvm(exported, tmp_path):
    x = nt.sample_input(9)
    np.save(tmp_path / "x.npy", x)
    np.savez(tmp_path / "ref.npz", **nt.reference(x))
    code = f"""
import sys
sys.modules["tvm"] = None
sys.modules["tvm_ffi"] = None
import numpy as np
import qcompiler
out = qcompiler.load({str(exported)!r}, num_threads=2).run({{"x": np.load({str(tmp_path / 'x.npy')!r})}})
ref = np.load({str(tmp_path / 'ref.npz')!r})
for k in ref.files:
    np.testing.assert_allclose(out[k], ref[k], rtol=1e-5, atol=1e-5)
assert "tvm" not in [m.split(".")[0] for m in sys.modules if sys.modules[m] is not None]
print("OK")
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == "OK", proc.stderr


def test_static_libraries_link_into_one_program(tmp_path):
    """Two modules' static archives link into one executable without symbol clashes."""
    a = build_module(nt.make_lowered(), name="net_a")
    b = build_module(nt.make_lowered(seed=4), name="net_b")
    da, db = a.export(tmp_path / "a"), b.export(tmp_path / "b")
    x = nt.sample_input(2)
    (tmp_path / "x.bin").write_bytes(x.tobytes())
    main = tmp_path / "main.c"
    main.write_text(r"""
#include <stdio.h>
#include "net_a.h"
#include "net_b.h"
int main(int argc, char** argv) {
  static float x[8 * 32], logits[2][8 * 16], hidden[2][8 * 64];
  FILE* f = fopen(argv[1], "rb");
  qc_net_a_t* a; qc_net_b_t* b;
  if (argc < 3 || !f || fread(x, sizeof x, 1, f) != 1) return 2;
  fclose(f);
  if (qc_net_a_create(&a, NULL, 2) != QC_OK || qc_net_b_create(&b, NULL, 1) != QC_OK) return 3;
  {
    const void* in[1] = {x};
    size_t in_n[1] = {sizeof x}, out_n[2] = {sizeof logits[0], sizeof hidden[0]};
    void* oa[2] = {logits[0], hidden[0]};
    void* ob[2] = {logits[1], hidden[1]};
    if (qc_net_a_run(a, 1, in, in_n, 2, oa, out_n) != QC_OK) { puts(qc_net_a_last_error(a)); return 4; }
    if (qc_net_b_run(b, 1, in, in_n, 2, ob, out_n) != QC_OK) { puts(qc_net_b_last_error(b)); return 4; }
  }
  f = fopen(argv[2], "wb");
  fwrite(logits, sizeof logits, 1, f);
  fclose(f);
  qc_net_a_destroy(a); qc_net_b_destroy(b);
  return 0;
}
""")
    exe = tmp_path / "main"
    subprocess.run(["cc", "-O1", "-I", da, "-I", db, str(main), os.path.join(da, "libnet_a.a"),
                    os.path.join(db, "libnet_b.a"), "-lm", "-lpthread", "-o", str(exe)], check=True,
                   capture_output=True, text=True)
    proc = subprocess.run([str(exe), str(tmp_path / "x.bin"), str(tmp_path / "out.bin")], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    logits = np.fromfile(tmp_path / "out.bin", np.float32).reshape(2, 8, 16)
    np.testing.assert_allclose(logits[0], nt.reference(x, 0)["logits"], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(logits[1], nt.reference(x, 4)["logits"], rtol=1e-5, atol=1e-5)


# -- lifetimes, threads and fork: regression tests for hangs and silent wrong answers -------------------
def _run_python(code: str, timeout: int = 120) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh interpreter; a hang becomes a test failure, not a stuck test run."""
    try:
        return subprocess.run([sys.executable, "-X", "faulthandler", "-c", code], capture_output=True, text=True,
                              timeout=timeout, cwd=TESTS)
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"the script hung for {timeout} s (deadlock?):\n{code}\n{e.stderr or ''}")


def _start_and_join(threads, timeout: int = 60) -> None:
    """Start daemon threads and join them; a deadlocked one fails the test instead of hanging it."""
    for t in threads:
        t.daemon = True
        t.start()
    for t in threads:
        t.join(timeout)
    hung = [t.name for t in threads if t.is_alive()]
    assert not hung, f"{hung} still running after {timeout} s: deadlock"


def test_module_survives_fork(exported, tmp_path):
    """A model loaded before fork() runs and closes in the child (both used to wait forever: the
    child inherits the pool but not its worker threads). Forking while another thread is inside a
    run is not tested: POSIX leaves a child forked from a multithreaded process at the mercy of any
    lock held at that moment (malloc, BLAS), which made such a test hang now and then in CI."""
    x = nt.sample_input(13)
    np.save(tmp_path / "x.npy", x)
    np.savez(tmp_path / "ref.npz", **nt.reference(x))
    code = f"""
import os
import numpy as np
from qcompiler.runtime.loader import load
x = np.load({str(tmp_path / 'x.npy')!r})
ref = np.load({str(tmp_path / 'ref.npz')!r})
def check(out):
    for k in ref.files:
        np.testing.assert_allclose(out[k], ref[k], rtol=1e-5, atol=1e-5)
net = load({str(exported)!r}, num_threads=2)
check(net.run({{"x": x}}))
for i in range(4):
    pid = os.fork()
    if pid == 0:
        status = 1
        try:
            check(net.run({{"x": x}}))
            check(net.run({{"x": x}}))
            if i % 2:
                net.close()       # destroying the inherited model must not wait for the parent's threads
            status = 0
        finally:
            os._exit(status)
    _, status = os.waitpid(pid, 0)
    assert status == 0, f"child {{i}} failed with status {{status}}"
check(net.run({{"x": x}}))        # the parent's model is unaffected
net.close()
print("OK")
"""
    proc = _run_python(code)
    assert proc.returncode == 0 and proc.stdout.strip().endswith("OK"), proc.stdout + proc.stderr


def test_one_model_shared_by_threads(exported):
    """Runs of one model from several Python threads take turns (they used to share the model's
    argument buffers and pool: wrong outputs and spurious kernel errors)."""
    net = load(exported, num_threads=2)
    errors = []

    def work(seed):
        x = nt.sample_input(seed)
        try:
            for _ in range(20):
                _check(net.run({"x": x}), x)
        except Exception as e:     # reported below
            errors.append(e)

    _start_and_join([threading.Thread(target=work, args=(s,)) for s in (21, 22, 23)])
    assert not errors, errors[0]


def test_c_entry_point_refuses_overlapping_runs(exported):
    """Calling the library directly (no Python lock) from two threads: each call either runs
    correctly or returns QC_ERR_BUSY, never a wrong answer."""
    net = load(exported, num_threads=2)
    run, handle = net._fn["run"], net._handle
    P, S = ctypes.c_void_p, ctypes.c_size_t
    results, busy = [], []

    def work(seed):
        x = nt.sample_input(seed)
        outs = [np.empty((8, 16), np.float32), np.empty((8, 64), np.float32)]
        args = ((P * 1)(x.ctypes.data), (S * 1)(1024), (P * 2)(*[o.ctypes.data for o in outs]), (S * 2)(512, 2048))
        for _ in range(40):
            rc = run(handle, 1, args[0], args[1], 2, args[2], args[3])
            if rc == QC_ERR_BUSY:
                busy.append(net._fn["last_error"](None).decode())
                continue
            results.append(rc)
            if rc == 0:
                try:
                    _check({"logits": outs[0], "h2": outs[1]}, x)
                except AssertionError as e:
                    results.append(e)

    _start_and_join([threading.Thread(target=work, args=(s,)) for s in (31, 32)])
    assert results and all(r == 0 for r in results), [r for r in results if r != 0][:3]
    assert all("already running in another thread" in m for m in busy)
    from qcompiler.codegen.aot import ERROR_CODES     # the loader's copy of the code is the header's
    assert ("QC_ERR_BUSY", QC_ERR_BUSY) in [(n, v) for n, v, _ in ERROR_CODES]


def test_close_waits_for_a_run_in_progress(exported):
    """close() on one thread while another runs: the run finishes (or is refused), then the model is
    destroyed. It used to free the pool under the running thread, which then waited forever for
    workers that had exited. (In a subprocess: the old failure hangs the closing thread too.)"""
    code = f"""
import threading
import numpy as np
import native_testnet as nt
from qcompiler.errors import RuntimeInputError
from qcompiler.runtime.loader import load
net = load({str(exported)!r}, num_threads=2)
x = nt.sample_input(4)
ref = nt.reference(x)
outcomes, started = [], threading.Event()
def work():
    for i in range(300):
        try:
            out = net.run({{"x": x}})
        except RuntimeInputError as e:
            outcomes.append(str(e))
            return
        for k in ref:
            np.testing.assert_allclose(out[k], ref[k], rtol=1e-5, atol=1e-5)
        started.set()
    outcomes.append("finished")
t = threading.Thread(target=work)
t.start()
started.wait(30)
net.close()
t.join()
net.close()                       # twice is fine
assert outcomes and ("was closed" in outcomes[0] or outcomes[0] == "finished"), outcomes
print("OK")
"""
    proc = _run_python(code, timeout=60)
    assert proc.returncode == 0 and proc.stdout.strip().endswith("OK"), proc.stdout + proc.stderr


def test_reexport_into_a_loaded_directory_loads_the_new_module(built, tmp_path):
    """The dynamic loader hands back an already loaded library by its path: loading a directory
    again after exporting another module (same name, other weights) into it used to run the old one."""
    d = built.export(tmp_path / "m")
    x = nt.sample_input(6)
    _check(load(d, num_threads=1).run({"x": x}), x, seed=0)
    build_module(nt.make_lowered(seed=4), name="testnet").export(d)
    _check(load(d, num_threads=1).run({"x": x}), x, seed=4)
    built.export(d)                   # back to the first: the same bytes share the first load
    _check(load(d, num_threads=2).run({"x": x}), x, seed=0)


def test_library_overwritten_in_place_is_refused(built, tmp_path):
    """Overwriting a loaded library's file in place (same inode, e.g. ``cp`` over it) changes the
    code under the running process; loading it again says so instead of running damaged code.
    (In a subprocess: the first module's code is damaged on purpose.)"""
    d = built.export(tmp_path / "a")
    other = build_module(nt.make_lowered(seed=4), name="testnet").files["libtestnet.so"]
    (tmp_path / "other.so").write_bytes(other)
    code = f"""
import os
from qcompiler.errors import ModelError
from qcompiler.runtime.loader import load
first = load({str(d)!r}, num_threads=1)
with open({str(d)!r} + "/libtestnet.so", "r+b") as f:     # same inode, new bytes
    f.write(open({str(tmp_path / 'other.so')!r}, "rb").read())
    f.truncate()
try:
    load({str(d)!r}, num_threads=1)
except ModelError as e:
    print("refused:", e)
os._exit(0)                                             # never touch the damaged first module
"""
    proc = _run_python(code, timeout=60)
    assert proc.returncode == 0 and "refused:" in proc.stdout and "overwritten in place" in proc.stdout, \
        proc.stdout + proc.stderr
