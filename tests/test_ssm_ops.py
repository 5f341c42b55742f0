"""The SSM ops against their float64 sequential references: values, gradients, shapes, dtypes and dispatch."""

from __future__ import annotations

import sys
import types

import pytest
import torch

from nnunetv2_mamba.ssm.ops import backend, causal_conv1d, selective_scan, ssd
from nnunetv2_mamba.ssm.ops import selective_scan_cpu
from nnunetv2_mamba.ssm.ops import selective_scan_interface as ssi
from nnunetv2_mamba.ssm.ops import ssd_chunked
from nnunetv2_mamba.ssm.ops.reference import (causal_conv1d_ref, rel_err, scan_inputs, selective_scan_ref, ssd_inputs,
                                               ssd_ref, with_mamba2_ranges)
from helpers.scan_paths import use_scan

F64 = torch.float64


def grads(out, inputs, weight):
    return torch.autograd.grad((out * weight).sum(), [t for t in inputs if t is not None])


# ---------------------------------------------------------------- selective scan

@pytest.fixture(params=["one-chunk", "chunks", "sub-chunks", "fused"])
def scan_path(request, monkeypatch):
    """The pure-PyTorch scan with one chunk, many chunks of T steps, and P > 1 sub-chunks scanned side by side; and
    the fused CPU kernel."""
    use_scan("fused" if request.param == "fused" else "pytorch", monkeypatch)
    if request.param != "fused":
        step_elements, chunk_elements = {"one-chunk": (1, 1 << 30), "chunks": (1, 40),
                                         "sub-chunks": (10 ** 6, 1000)}[request.param]
        monkeypatch.setattr(ssi, "_STEP_ELEMENTS", step_elements)
        monkeypatch.setattr(ssi, "_CHUNK_ELEMENTS", chunk_elements)
    return request.param


@pytest.mark.parametrize("b_mode,c_mode", [("const", "const"), ("3d", "3d"), (2, 2), ("const", 4), (4, "const"),
                                           ("3d", "const")])
@pytest.mark.parametrize("length", [1, 37, 130])
def test_selective_scan_matches_reference_float64(scan_path, b_mode, c_mode, length):
    inputs = scan_inputs(2, 8, length, 5, b_mode, c_mode)
    kwargs = dict(delta_softplus=True, return_last_state=True)
    y, last = selective_scan(**inputs, **kwargs)
    y_ref, last_ref = selective_scan_ref(**inputs, **kwargs)
    assert y.shape == (2, 8, length) and last.shape == (2, 8, 5)
    assert rel_err(y, y_ref) < 1e-12 and rel_err(last, last_ref) < 1e-12
    weight = torch.randn_like(y)
    for g, g_ref in zip(grads(y, inputs.values(), weight), grads(y_ref, inputs.values(), weight)):
        assert g.shape == g_ref.shape
        assert rel_err(g, g_ref) < 1e-10


@pytest.mark.parametrize("extras,softplus", [(False, False), (True, False), (False, True)])
def test_selective_scan_optional_arguments(scan_impl, extras, softplus):
    inputs = scan_inputs(1, 6, 29, 3, "3d", "3d", extras=extras)
    y = selective_scan(**inputs, delta_softplus=softplus)
    y_ref = selective_scan_ref(**inputs, delta_softplus=softplus)
    assert rel_err(y, y_ref) < 1e-12
    weight = torch.randn_like(y)
    for g, g_ref in zip(grads(y, inputs.values(), weight), grads(y_ref, inputs.values(), weight)):
        assert rel_err(g, g_ref) < 1e-10


def test_selective_scan_gradcheck(scan_impl, monkeypatch):
    monkeypatch.setattr(ssi, "_CHUNK_ELEMENTS", 30)  # several chunks even for these tiny shapes
    inputs = scan_inputs(1, 4, 11, 2, 2, 2, extras=False)
    fn = lambda u, delta, A, B, C: selective_scan(u, delta, A, B, C, delta_softplus=True)  # noqa: E731
    assert torch.autograd.gradcheck(fn, tuple(inputs.values()))


def test_selective_scan_float32_accuracy(scan_impl):
    """Relative error <= 1e-5 against float64 for values and every gradient, long enough for many chunks (and, in
    the fused kernel, full and partial lane blocks: 40 channels in 2 groups)."""
    inputs64 = scan_inputs(2, 40, 1500, 16, 2, 2)
    inputs32 = {k: v.detach().float().requires_grad_() for k, v in inputs64.items()}
    y = selective_scan(**inputs32, delta_softplus=True)
    y_ref = selective_scan_ref(**inputs64, delta_softplus=True)
    assert y.dtype == torch.float32
    assert rel_err(y, y_ref) < 1e-5
    weight = torch.randn_like(y_ref)
    for g, g_ref in zip(grads(y, inputs32.values(), weight.float()), grads(y_ref, inputs64.values(), weight)):
        assert rel_err(g, g_ref) < 1e-5


def test_selective_scan_half_inputs_return_input_dtype():
    inputs = {k: v.detach().to(torch.bfloat16) for k, v in scan_inputs(1, 4, 20, 3, "3d", "3d").items()}
    inputs["A"] = inputs["A"].float()
    assert selective_scan(**inputs).dtype == torch.bfloat16


@pytest.mark.parametrize("bad,message", [
    (dict(u=torch.zeros(2, 8)), "batch, dim, L"),
    (dict(A=torch.zeros(7, 5)), "A must be"),
    (dict(B=torch.zeros(2, 3, 5, 20)), "B must be"),
    (dict(C=torch.zeros(2, 2, 5, 20)), "same number of groups"),
    (dict(D=torch.zeros(3)), "D must have shape"),
])
def test_selective_scan_rejects_bad_shapes(bad, message):
    inputs = {k: v.detach() for k, v in scan_inputs(2, 8, 20, 5, 4, 4, dtype=torch.float32, extras=False).items()}
    inputs.update(bad)
    if "u" in bad:
        inputs["delta"] = bad["u"]
    with pytest.raises(ValueError, match=message):
        selective_scan(**inputs)


# ---------------------------------------------------------------- SSD

@pytest.mark.parametrize("chunk,block", [(8, 1), (16, 10 ** 9), (64, 1)])
@pytest.mark.parametrize("shape", [(2, 37, 4, 3, 2, 5, "h"), (1, 130, 6, 4, 1, 8, "hp"), (2, 5, 3, 2, 3, 4, "h")])
def test_ssd_matches_reference_float64(monkeypatch, chunk, block, shape):
    """Chunk padding, several chunks per block and several blocks, groups, both D shapes, states in and out."""
    monkeypatch.setattr(ssd_chunked, "PURE_CHUNK_SIZE", chunk)
    monkeypatch.setattr(ssd_chunked, "_BLOCK_ELEMENTS", block)
    inputs = ssd_inputs(*shape)
    kwargs = dict(dt_softplus=True, dt_limit=(0.01, 2.0), return_final_states=True)
    y, final = ssd(chunk_size=256, **inputs, **kwargs)
    y_ref, final_ref = ssd_ref(**inputs, **kwargs)
    assert y.shape == inputs["x"].shape and final.shape == inputs["initial_states"].shape
    assert rel_err(y, y_ref) < 1e-12 and rel_err(final, final_ref) < 1e-12
    wy, wf = torch.randn_like(y), torch.randn_like(final)
    ours = torch.autograd.grad((y * wy).sum() + (final * wf).sum(), list(inputs.values()))
    ref = torch.autograd.grad((y_ref * wy).sum() + (final_ref * wf).sum(), list(inputs.values()))
    for name, g, g_ref in zip(inputs, ours, ref):
        assert rel_err(g, g_ref) < 1e-10, name


def test_ssd_without_optional_arguments():
    inputs = {k: v for k, v in ssd_inputs(2, 70, 4, 4, 1, 6).items() if k in "x dt A B C".split()}
    assert rel_err(ssd(**inputs, chunk_size=64), ssd_ref(**inputs)) < 1e-12


def test_ssd_gradcheck(monkeypatch):
    monkeypatch.setattr(ssd_chunked, "PURE_CHUNK_SIZE", 4)
    monkeypatch.setattr(ssd_chunked, "_BLOCK_ELEMENTS", 1)
    inputs = ssd_inputs(1, 9, 2, 2, 1, 3)
    fn = lambda x, dt, A, B, C, init: ssd(x, dt, A, B, C, 4, initial_states=init, dt_softplus=True,  # noqa: E731
                                          return_final_states=True)
    args = tuple(inputs[k] for k in ("x", "dt", "A", "B", "C", "initial_states"))
    assert torch.autograd.gradcheck(fn, args)


def test_ssd_float32_accuracy():
    """Relative error <= 1e-5 against float64, with Mamba2's initial parameter ranges (dt in [0.001, 0.1] through
    dt_bias, A in [-16, -1]); the float64 tests above cover arbitrary values."""
    inputs64 = with_mamba2_ranges(ssd_inputs(2, 300, 4, 8, 1, 16))
    inputs32 = {k: v.detach().float().requires_grad_() for k, v in inputs64.items()}
    y = ssd(**inputs32, chunk_size=256, dt_softplus=True)
    y_ref = ssd_ref(**inputs64, dt_softplus=True)
    assert rel_err(y, y_ref) < 1e-5
    weight = torch.randn_like(y_ref)
    ours = torch.autograd.grad((y * weight.float()).sum(), list(inputs32.values()))
    ref = torch.autograd.grad((y_ref * weight).sum(), list(inputs64.values()))
    for name, g, g_ref in zip(inputs64, ours, ref):
        assert rel_err(g, g_ref) < 1e-5, name


def test_ssd_rejects_bad_shapes():
    inputs = {k: v.detach() for k, v in ssd_inputs(1, 10, 4, 2, 1, 3).items()}
    inputs["B"] = torch.zeros(1, 10, 3, 3, dtype=F64)
    inputs["C"] = inputs["B"]
    with pytest.raises(ValueError, match="divisible by ngroups"):
        ssd(**inputs)


# ---------------------------------------------------------------- causal conv1d

@pytest.mark.parametrize("activation", [None, "silu", "swish"])
@pytest.mark.parametrize("width", [2, 4])
def test_causal_conv1d_matches_reference(activation, width):
    x = torch.randn(2, 6, 17, dtype=F64, requires_grad=True)
    weight = torch.randn(6, width, dtype=F64, requires_grad=True)
    bias = torch.randn(6, dtype=F64, requires_grad=True)
    out = causal_conv1d(x, weight, bias, activation=activation)
    ref = causal_conv1d_ref(x, weight, bias, activation=activation)
    assert rel_err(out, ref) < 1e-12
    w = torch.randn_like(out)
    for g, g_ref in zip(grads(out, (x, weight, bias), w), grads(ref, (x, weight, bias), w)):
        assert rel_err(g, g_ref) < 1e-12
    # causality: the output at t never depends on inputs after t
    x2 = x.detach().clone()
    x2[..., 9:] += 1.0
    assert torch.equal(causal_conv1d(x2, weight, bias, activation)[..., :9], out.detach()[..., :9])


def test_causal_conv1d_rejects_unknown_activation():
    with pytest.raises(ValueError, match="activation"):
        causal_conv1d(torch.zeros(1, 2, 3), torch.zeros(2, 4), activation="relu")


# ---------------------------------------------------------------- precision and dispatch

def test_ops_run_in_float32_under_autocast():
    scan = {k: v.detach().float() for k, v in scan_inputs(1, 8, 40, 4, "3d", "3d").items()}
    ssd_in = {k: v.detach().float() for k, v in ssd_inputs(1, 40, 2, 4, 1, 8).items()}
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y_scan = selective_scan(**{k: (v.bfloat16() if k in ("u", "delta", "B", "C", "z") else v)
                                   for k, v in scan.items()}, delta_softplus=True)
        y_ssd = ssd(**{k: (v.bfloat16() if k in ("x", "dt", "B", "C", "z") else v) for k, v in ssd_in.items()},
                    dt_softplus=True)
    assert y_scan.dtype == torch.float32 and y_ssd.dtype == torch.float32
    assert torch.isfinite(y_scan).all() and torch.isfinite(y_ssd).all()
    # only the bf16 rounding of the inputs separates them from the float32 result
    ref_scan = selective_scan(**{k: (v.bfloat16().float() if k in ("u", "delta", "B", "C", "z") else v)
                                 for k, v in scan.items()}, delta_softplus=True)
    assert rel_err(y_scan, ref_scan) < 1e-5


def test_force_pure_and_cpu_tensors_use_pure_path(monkeypatch):
    fake_kernel = object()
    monkeypatch.setattr(backend, "_load", lambda op: (fake_kernel, "ok"))
    on_cuda = types.SimpleNamespace(is_cuda=True)
    on_cpu = types.SimpleNamespace(is_cuda=False)
    monkeypatch.delenv(backend.FORCE_PURE_ENV, raising=False)
    assert backend.cuda_kernel("selective_scan", on_cuda, None) is fake_kernel
    assert backend.cuda_kernel("selective_scan", on_cuda, on_cpu) is None
    monkeypatch.setenv(backend.FORCE_PURE_ENV, "1")
    assert backend.cuda_kernel("selective_scan", on_cuda) is None
    assert "FORCE_PURE" in backend.backend_report()["ssd"]


def test_broken_kernel_package_falls_back_with_reason(monkeypatch):
    def broken_import(name):
        raise OSError("libcudart.so.12: cannot open shared object file")

    monkeypatch.setattr(backend.importlib, "import_module", broken_import)
    backend._load.cache_clear()
    try:
        monkeypatch.delenv(backend.FORCE_PURE_ENV, raising=False)
        assert backend.cuda_kernel("ssd", types.SimpleNamespace(is_cuda=True)) is None
        assert "libcudart" in backend.kernel_status("ssd")
        assert "libcudart" in backend.backend_report()["causal_conv1d"]
    finally:
        backend._load.cache_clear()


# mamba_ssm/ops/selective_scan_interface.py of an install without the compiled selective_scan_cuda: as published
# (the import unguarded) and as users patch it (guarded, so that selective_scan_fn only fails when called)
UNGUARDED = "import selective_scan_cuda\n\ndef selective_scan_fn(*args, **kwargs):\n    return 'scan kernel'\n"
GUARDED = ("try:\n    import selective_scan_cuda\nexcept ImportError:\n    selective_scan_cuda = None\n\n"
           "def selective_scan_fn(*args, **kwargs):\n    return selective_scan_cuda.fwd(*args)\n")
# layout -> (selective_scan_interface.py, the package's __init__.py, whether the SSD kernel is usable)
LAYOUTS = {
    "unguarded": (UNGUARDED, "", True),
    "guarded": (GUARDED, "", True),
    # mamba-ssm 2.3.2.post1's own __init__ imports the interface: the package, and so its SSD module, fails to import
    "published-init": (UNGUARDED, "from mamba_ssm.ops.selective_scan_interface import selective_scan_fn\n", False),
}


@pytest.mark.parametrize("layout", LAYOUTS)
def test_mamba_ssm_without_selective_scan_extension(layout, tmp_path, monkeypatch, caplog):
    """A mamba-ssm whose selective-scan extension was not built (sources after 2.3.2.post1 leave it out unless
    MAMBA_KEEP_CUDA_BUILD=TRUE): Mamba1 falls back to the pure path with one warning that says why; Mamba2 keeps the
    Triton SSD kernel for CUDA tensors where its package imports, even after the selective scan failed to load."""
    interface, init, ssd_usable = LAYOUTS[layout]
    package = tmp_path / "mamba_ssm"
    (package / "ops" / "triton").mkdir(parents=True)
    for folder in (package / "ops", package / "ops" / "triton"):
        (folder / "__init__.py").write_text("")
    (package / "__init__.py").write_text(init)
    (package / "ops" / "selective_scan_interface.py").write_text(interface)
    (package / "ops" / "triton" / "ssd_combined.py").write_text(
        "def mamba_chunk_scan_combined(*args, **kwargs):\n    return 'ssd kernel'\n")

    def fake_modules() -> list[str]:
        return [n for n in sys.modules if n.split(".")[0] in ("mamba_ssm", "selective_scan_cuda")]

    for name in fake_modules():
        monkeypatch.delitem(sys.modules, name)  # e.g. the stubs test_mamba_ssm_compat installs, restored afterwards
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delenv(backend.FORCE_PURE_ENV, raising=False)
    monkeypatch.setattr(backend, "_logged", set())
    on_cuda = types.SimpleNamespace(is_cuda=True)
    backend._load.cache_clear()
    try:
        with caplog.at_level("INFO", logger="nnunetv2_mamba.ssm"):
            assert backend.cuda_kernel("selective_scan", on_cuda, on_cuda) is None
            assert backend.cuda_kernel("selective_scan", on_cuda) is None
            ssd_kernel = backend.cuda_kernel("ssd", on_cuda)
        assert (ssd_kernel is not None and ssd_kernel() == "ssd kernel") == ssd_usable
        scan_lines = [r for r in caplog.records if "selective_scan uses" in r.getMessage()]
        assert len(scan_lines) == 1 and scan_lines[0].levelname == "WARNING"
        assert "without its CUDA extension selective_scan_cuda" in scan_lines[0].getMessage()
        assert "MAMBA_KEEP_CUDA_BUILD=TRUE" in backend.backend_report()["selective_scan"]
        assert backend.backend_report()["ssd"].startswith("cuda-kernel") == ssd_usable
    finally:
        backend._load.cache_clear()
        for name in fake_modules():
            del sys.modules[name]


def test_backend_choice_is_logged_once(scan_impl, caplog, monkeypatch):
    monkeypatch.setattr(backend, "_logged", set())
    inputs = {k: v.detach() for k, v in scan_inputs(1, 4, 6, 2, "3d", "3d", extras=False).items()}
    with caplog.at_level("INFO", logger="nnunetv2_mamba.ssm"):
        selective_scan(**inputs)
        selective_scan(**inputs)
    messages = [r.getMessage() for r in caplog.records if "selective_scan uses" in r.getMessage()]
    expected = {"pytorch": "pure-pytorch backend (tensors are not on a CUDA device)",
                "fused": "fused-cpu backend (CPU tensors)"}[scan_impl]
    assert messages == [f"nnunetv2_mamba: selective_scan uses the {expected}"]


def test_fused_scan_takes_time_major_rows_without_copies(scan_impl):
    """SS2D hands the scan (batch, dim, L) views of time-major (L, batch, dim) rows; the fused kernel reads them in
    place and returns y in the same layout, and both paths agree with the reference."""
    batch, dim, length, dstate = 3, 24, 70, 4
    rows = torch.randn(length, batch, dim, dtype=F64)
    u = rows.permute(1, 2, 0).requires_grad_()
    delta = (0.3 * torch.randn(length, batch, dim, dtype=F64)).permute(1, 2, 0)
    A = -torch.rand(dim, dstate, dtype=F64) - 0.1
    B, C = torch.randn(batch, 3, dstate, length, dtype=F64), torch.randn(batch, 3, dstate, length, dtype=F64)
    y = selective_scan(u, delta, A, B, C, delta_softplus=True)
    y_ref = selective_scan_ref(u, delta, A, B, C, delta_softplus=True)
    assert rel_err(y, y_ref) < 1e-12
    if scan_impl == "fused":
        assert y.permute(2, 0, 1).is_contiguous()  # the consumer's reshape back to rows is a view
    weight = torch.randn_like(y_ref)
    (g,), (g_ref,) = grads(y, [u], weight), grads(y_ref, [u], weight)
    assert rel_err(g, g_ref) < 1e-10


def test_fused_scan_build_failure_falls_back_with_a_warning(monkeypatch):
    import torch.utils.cpp_extension

    def no_compiler(*args, **kwargs):
        raise RuntimeError("Error building extension\nc++: command not found")

    monkeypatch.delenv(selective_scan_cpu.CPU_KERNEL_ENV, raising=False)
    monkeypatch.delenv(backend.FORCE_PURE_ENV, raising=False)
    monkeypatch.setattr(torch.utils.cpp_extension, "load", no_compiler)
    selective_scan_cpu._build.cache_clear()
    try:
        inputs = {k: v.detach() for k, v in scan_inputs(1, 4, 9, 2, "3d", "3d", extras=False).items()}
        with pytest.warns(UserWarning, match="c\\+\\+: command not found.*pure-PyTorch"):
            y = selective_scan(**inputs)
        assert rel_err(y, selective_scan_ref(**inputs)) < 1e-12
        assert selective_scan_cpu.kernel() is None
        assert selective_scan_cpu.status() == "pure-pytorch (RuntimeError: c++: command not found)"
        monkeypatch.setenv(selective_scan_cpu.CPU_KERNEL_ENV, "0")
        assert selective_scan_cpu.status() == f"pure-pytorch ({selective_scan_cpu.CPU_KERNEL_ENV} is off)"
    finally:
        selective_scan_cpu._build.cache_clear()


def test_cuda_kernels_get_mamba_ssm_calling_convention(monkeypatch):
    """When a kernel is available, each op hands its arguments over in the kernel package's calling convention
    (positional order of ``selective_scan_fn``, ``chunk_size`` sixth for ``mamba_chunk_scan_combined``, keywords of
    ``causal_conv1d_fn``). The stand-in kernels are the sequential references behind those signatures."""
    def conv_kernel(x, weight, bias=None, seq_idx=None, initial_states=None, return_final_states=False,
                    final_states_out=None, activation=None):
        return causal_conv1d_ref(x, weight, bias, activation)

    kernels = {"selective_scan": selective_scan_ref, "causal_conv1d": conv_kernel,
               "ssd": lambda x, dt, A, B, C, chunk_size, **kw: ssd_ref(x, dt, A, B, C, **kw)}
    scan = scan_inputs(2, 8, 21, 4, 2, 2)
    ssd_in = ssd_inputs(1, 30, 4, 2, 2, 3)
    conv = (torch.randn(1, 3, 9, dtype=F64), torch.randn(3, 4, dtype=F64), torch.randn(3, dtype=F64))
    pure = (selective_scan(**scan, delta_softplus=True, return_last_state=True),
            ssd(**ssd_in, chunk_size=8, dt_softplus=True, return_final_states=True),
            causal_conv1d(*conv, activation="silu"))
    consulted = []
    monkeypatch.setattr(backend, "cuda_kernel", lambda op, *tensors: consulted.append(op) or kernels[op])
    monkeypatch.setenv(selective_scan_cpu.CPU_KERNEL_ENV, "0")  # CPU tensors would otherwise get the fused scan
    dispatched = (selective_scan(**scan, delta_softplus=True, return_last_state=True),
                  ssd(**ssd_in, chunk_size=8, dt_softplus=True, return_final_states=True),
                  causal_conv1d(*conv, activation="silu"))
    assert consulted == ["selective_scan", "ssd", "causal_conv1d"]
    for a, b in zip((*pure[0], *pure[1], pure[2]), (*dispatched[0], *dispatched[1], dispatched[2])):
        assert rel_err(a, b) < 1e-6  # A, D and delta_bias reach selective_scan_fn in float32, as it requires


def test_fused_scan_build_clears_a_stale_lock(tmp_path, monkeypatch):
    """A build killed half-way leaves torch's lock file, and torch would wait for it forever: an old one is removed,
    a fresh one (another process building right now) is left alone."""
    import os
    import time

    import torch.utils.cpp_extension

    seen = []
    monkeypatch.setattr(torch.utils.cpp_extension, "load",
                        lambda name, build_directory, **kw: seen.append((name, os.listdir(build_directory))) or object())
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    monkeypatch.delenv(selective_scan_cpu.CPU_KERNEL_ENV, raising=False)
    monkeypatch.delenv(backend.FORCE_PURE_ENV, raising=False)
    lock = selective_scan_cpu.build_directory() / "lock"
    lock.parent.mkdir(parents=True)
    try:
        for age, kept in ((2 * selective_scan_cpu._STALE_LOCK_S, False), (5, True)):
            lock.touch()
            os.utime(lock, (time.time() - age, time.time() - age))
            selective_scan_cpu._build.cache_clear()
            assert selective_scan_cpu.status().startswith("fused C++ kernel (nnunetv2_mamba_selective_scan_")
            assert seen[-1] == (selective_scan_cpu.build_name(), ["lock"] if kept else [])
    finally:
        selective_scan_cpu._build.cache_clear()
